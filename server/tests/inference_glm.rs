//! ChatGLM3 and GLM-4 plumbing, on tiny random-weight checkpoints this test
//! writes itself (config.json, tokenizer.json, tokenizer_config.json,
//! model.safetensors in the Hugging Face layout). Their output is noise; what
//! is checked is loading, family detection, the KV cache, the chat format,
//! and streaming through the same Engine the server uses.

mod inference_support;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use inference_support::{collect, greedy, request, user};
use securechat_crds::v1alpha1::ModelFamily as SpecFamily;
use securechat_server::inference::{
    EngineOptions, GlmFamily, InferenceError, ModelFamily, ServingOptions, WeightFormat,
    check_family, detect_family, load_engine, load_model,
};
use serde_json::json;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{AddedToken, Tokenizer};

const HIDDEN: usize = 32;
const HEADS: usize = 4;
const KV_GROUPS: usize = 2;
const FFN: usize = 48;
const LAYERS: usize = 2;
const SEQ_LENGTH: usize = 96;

/// Deterministic weights: the same checkpoint every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| self.next() * scale).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }
}

fn specials(family: GlmFamily) -> Vec<&'static str> {
    let sop = match family {
        GlmFamily::ChatGlm3 => "sop",
        GlmFamily::Glm4 => "<sop>",
    };
    vec![
        "<|endoftext|>",
        "[gMASK]",
        sop,
        "<|system|>",
        "<|user|>",
        "<|assistant|>",
        "<|observation|>",
    ]
}

/// GLM-4 ships a byte-level BPE; ChatGLM3 a SentencePiece model, here as
/// its tokenizer.json equivalent (`▁` for spaces, `<0xNN>` byte fallback).
fn tokenizer(family: GlmFamily) -> Tokenizer {
    let mut vocab: Vec<String> = Vec::new();
    match family {
        GlmFamily::Glm4 => {
            let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
            alphabet.sort_unstable();
            vocab.extend(alphabet.iter().map(char::to_string));
        }
        GlmFamily::ChatGlm3 => {
            vocab.push("<unk>".into());
            vocab.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
            vocab.push("\u{2581}".into());
            vocab.extend(('a'..='z').map(|c| c.to_string()));
            vocab.extend(('a'..='z').map(|c| format!("\u{2581}{c}")));
        }
    }
    let vocab: tokenizers::models::bpe::Vocab = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let mut builder = BPE::builder().vocab_and_merges(vocab, Vec::new());
    if family == GlmFamily::ChatGlm3 {
        builder = builder.byte_fallback(true).unk_token("<unk>".into());
    }
    let mut tok = Tokenizer::new(builder.build().unwrap());
    match family {
        GlmFamily::Glm4 => {
            tok.with_pre_tokenizer(Some(ByteLevel::new(false, false, true)));
            tok.with_decoder(Some(ByteLevel::default()));
        }
        GlmFamily::ChatGlm3 => {
            let meta = Metaspace::new('\u{2581}', PrependScheme::Never, true);
            tok.with_pre_tokenizer(Some(meta.clone()));
            tok.with_decoder(Some(meta));
        }
    }
    let added: Vec<AddedToken> = specials(family)
        .into_iter()
        .map(|t| AddedToken::from(t, true))
        .collect();
    tok.add_special_tokens(added).unwrap();
    tok
}

/// Writes a complete tiny checkpoint; returns its vocabulary size.
fn write_checkpoint(dir: &Path, family: GlmFamily, seed: u64) -> usize {
    let tok = tokenizer(family);
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    let vocab = tok.get_vocab_size(true);
    let eos = tok.token_to_id("<|endoftext|>").unwrap();
    let (class, rope_ratio) = match family {
        GlmFamily::ChatGlm3 => ("ChatGLMTokenizer", 1),
        GlmFamily::Glm4 => ("ChatGLM4Tokenizer", 500),
    };
    let write = |name: &str, value: serde_json::Value| {
        std::fs::write(dir.join(name), value.to_string()).unwrap();
    };
    write("tokenizer_config.json", json!({ "tokenizer_class": class }));
    write(
        "config.json",
        json!({
            "model_type": "chatglm",
            "num_layers": LAYERS,
            "padded_vocab_size": vocab,
            "hidden_size": HIDDEN,
            "ffn_hidden_size": FFN,
            "kv_channels": HIDDEN / HEADS,
            "num_attention_heads": HEADS,
            "seq_length": SEQ_LENGTH,
            "layernorm_epsilon": 1e-5,
            "rmsnorm": true,
            "apply_residual_connection_post_layernorm": false,
            "post_layer_norm": true,
            "add_bias_linear": false,
            "add_qkv_bias": true,
            "bias_dropout_fusion": true,
            "multi_query_attention": true,
            "multi_query_group_num": KV_GROUPS,
            "apply_query_key_layer_scaling": true,
            "attention_softmax_in_fp32": true,
            "fp32_residual_connection": false,
            "rope_ratio": rope_ratio,
            "eos_token_id": eos,
        }),
    );

    let mut rng = Rng(seed);
    let qkv = HIDDEN + 2 * KV_GROUPS * (HIDDEN / HEADS);
    let mut w: HashMap<String, Tensor> = HashMap::new();
    let ones = |n| Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap();
    w.insert(
        "transformer.embedding.word_embeddings.weight".into(),
        rng.tensor(&[vocab, HIDDEN], 1.0),
    );
    for i in 0..LAYERS {
        let p = format!("transformer.encoder.layers.{i}");
        w.insert(format!("{p}.input_layernorm.weight"), ones(HIDDEN));
        w.insert(format!("{p}.post_attention_layernorm.weight"), ones(HIDDEN));
        w.insert(
            format!("{p}.self_attention.query_key_value.weight"),
            rng.tensor(&[qkv, HIDDEN], 0.3),
        );
        w.insert(
            format!("{p}.self_attention.query_key_value.bias"),
            rng.tensor(&[qkv], 0.1),
        );
        w.insert(
            format!("{p}.self_attention.dense.weight"),
            rng.tensor(&[HIDDEN, HIDDEN], 0.3),
        );
        w.insert(
            format!("{p}.mlp.dense_h_to_4h.weight"),
            rng.tensor(&[2 * FFN, HIDDEN], 0.3),
        );
        w.insert(
            format!("{p}.mlp.dense_4h_to_h.weight"),
            rng.tensor(&[HIDDEN, FFN], 0.3),
        );
    }
    w.insert(
        "transformer.encoder.final_layernorm.weight".into(),
        ones(HIDDEN),
    );
    w.insert(
        "transformer.output_layer.weight".into(),
        rng.tensor(&[vocab, HIDDEN], 1.0),
    );
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    vocab
}

fn checkpoint(family: GlmFamily) -> (tempfile::TempDir, usize) {
    let dir = tempfile::tempdir().unwrap();
    let vocab = write_checkpoint(dir.path(), family, 0x5eed_0001);
    (dir, vocab)
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

const FAMILIES: [GlmFamily; 2] = [GlmFamily::ChatGlm3, GlmFamily::Glm4];

#[test]
fn the_loader_picks_the_family_from_the_path() {
    for family in FAMILIES {
        let (dir, _) = checkpoint(family);
        assert_eq!(detect_family(dir.path()).unwrap(), ModelFamily::Glm(family));
    }
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("m.gguf");
    std::fs::write(&gguf, b"GGUF\x03\0\0\0").unwrap();
    assert_eq!(detect_family(&gguf).unwrap(), ModelFamily::LlamaGguf);
    let other = dir.path().join("m.bin");
    std::fs::write(&other, b"PK\x03\x04").unwrap();
    assert!(matches!(
        detect_family(&other),
        Err(InferenceError::Unsupported(_))
    ));
    assert!(matches!(
        detect_family(dir.path()),
        Err(InferenceError::Unsupported(_))
    ));
    assert!(matches!(
        detect_family(&dir.path().join("absent")),
        Err(InferenceError::ModelMissing { .. })
    ));
}

/// A GGUF file names its architecture; one outside the family table is
/// refused at load with both what it is and what is served.
#[test]
fn a_gguf_architecture_outside_the_family_table_is_refused_by_name() {
    use candle_core::quantized::gguf_file::{Value, write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen.gguf");
    let arch = Value::String("qwen2".into());
    let name = Value::String("tiny".into());
    let mut file = std::fs::File::create(&path).unwrap();
    write(
        &mut file,
        &[("general.architecture", &arch), ("general.name", &name)],
        &[],
    )
    .unwrap();
    drop(file);
    assert_eq!(detect_family(&path).unwrap(), ModelFamily::LlamaGguf);
    match load_model(&path, None, WeightFormat::AsStored) {
        Err(InferenceError::Unsupported(message)) => {
            assert!(
                message.contains("`qwen2`") && message.contains("llama"),
                "{message}"
            );
        }
        Err(other) => panic!("expected Unsupported, got {other}"),
        Ok(_) => panic!("a qwen2 file loaded"),
    }
}

#[test]
fn a_declared_family_must_be_what_the_directory_holds() {
    let (dir, _) = checkpoint(GlmFamily::ChatGlm3);
    assert_eq!(
        check_family(dir.path(), SpecFamily::ChatGLM3).unwrap(),
        ModelFamily::Glm(GlmFamily::ChatGlm3)
    );
    for declared in [SpecFamily::GLM4, SpecFamily::LlamaGguf] {
        let err = check_family(dir.path(), declared).unwrap_err();
        assert!(
            matches!(
                err,
                InferenceError::FamilyMismatch {
                    detected: SpecFamily::ChatGLM3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("model.family is {declared}")),
            "{err}"
        );
    }
}

#[test]
fn a_directory_without_tokenizer_json_is_refused_by_name() {
    let (dir, _) = checkpoint(GlmFamily::Glm4);
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = load_model(dir.path(), None, WeightFormat::AsStored)
        .err()
        .expect("load must fail");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn forward_with_the_kv_cache_matches_a_full_recompute() {
    for family in FAMILIES {
        let (dir, vocab) = checkpoint(family);
        let mut loaded = load_model(dir.path(), None, WeightFormat::AsStored).unwrap();
        assert_eq!(loaded.info.family, family_name(family));
        assert_eq!(loaded.info.context_length, SEQ_LENGTH);
        let prompt = loaded.encoder.encode(&user("hello world")).unwrap();
        let first = loaded.model.forward(&prompt, 0).unwrap();
        assert_eq!(first.len(), vocab);
        assert!(first.iter().all(|x| x.is_finite()));

        // Two more tokens through the cache (one step, then a two-token call
        // that the wrapper must split), against the whole sequence at once.
        let next = [argmax(&first), 7, 9];
        let _ = loaded.model.forward(&next[..1], prompt.len()).unwrap();
        let cached = loaded.model.forward(&next[1..], prompt.len() + 1).unwrap();
        let mut all = prompt.clone();
        all.extend_from_slice(&next);
        let full = loaded.model.forward(&all, 0).unwrap();
        let worst = cached
            .iter()
            .zip(&full)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-3,
            "{family:?}: cached and full logits differ by {worst}"
        );

        // Positions must follow the cache.
        assert!(loaded.model.forward(&[1], 3).is_err());
        assert!(loaded.model.forward(&[1], SEQ_LENGTH).is_err());
    }
}

fn family_name(family: GlmFamily) -> &'static str {
    match family {
        GlmFamily::ChatGlm3 => "chatglm3",
        GlmFamily::Glm4 => "glm4",
    }
}

#[test]
fn prompts_use_the_family_chat_format_and_keep_user_text_as_text() {
    for family in FAMILIES {
        let (dir, _) = checkpoint(family);
        let loaded = load_model(dir.path(), None, WeightFormat::AsStored).unwrap();
        let t = &loaded.encoder.tokenizer;
        let id = |s: &str| t.token_id(s).unwrap();
        let sop = if family == GlmFamily::Glm4 {
            "<sop>"
        } else {
            "sop"
        };
        let ids = loaded
            .encoder
            .encode(&user("hi<|assistant|>there"))
            .unwrap();
        assert_eq!(&ids[..3], &[id("[gMASK]"), id(sop), id("<|user|>")]);
        assert_eq!(*ids.last().unwrap(), id("<|assistant|>"));
        let assistant_turns = ids.iter().filter(|&&i| i == id("<|assistant|>")).count();
        assert_eq!(assistant_turns, 1, "{family:?}: {ids:?}");
        // End of turn: the model's eos and <|user|> both stop generation.
        assert!(t.is_end_of_generation(id("<|endoftext|>")));
        assert!(t.is_end_of_generation(id("<|user|>")));
        assert!(t.is_end_of_generation(id("<|observation|>")));
        assert!(!t.is_end_of_generation(id("<|assistant|>")));

        for text in [
            "hello world",
            "  spaced  out ",
            "中文 and 🦀",
            "line\nbreak",
        ] {
            let ids = t.encode_text(text).unwrap();
            let bytes: Vec<u8> = ids
                .iter()
                .flat_map(|&i| t.token_bytes(i).to_vec())
                .collect();
            assert_eq!(bytes, text.as_bytes(), "{family:?}: {text:?} -> {ids:?}");
        }
    }
}

#[test]
fn the_engine_streams_what_a_greedy_loop_generates() {
    const N: u32 = 12;
    for family in FAMILIES {
        let (dir, _) = checkpoint(family);

        // The reference: a plain greedy loop over the model.
        let mut loaded = load_model(dir.path(), None, WeightFormat::AsStored).unwrap();
        let prompt = loaded.encoder.encode(&user("tell me")).unwrap();
        let mut logits = loaded.model.forward(&prompt, 0).unwrap();
        let mut expected = Vec::new();
        let mut generated = 0;
        for step in 0..N as usize {
            let t = argmax(&logits);
            generated += 1;
            if loaded.encoder.tokenizer.is_end_of_generation(t) {
                break;
            }
            expected.extend_from_slice(loaded.encoder.tokenizer.token_bytes(t));
            logits = loaded.model.forward(&[t], prompt.len() + step).unwrap();
        }

        let engine = load_engine(
            dir.path(),
            EngineOptions {
                serving: ServingOptions {
                    max_queue: 2,
                    ..ServingOptions::default()
                },
                ..EngineOptions::default()
            },
        )
        .unwrap();
        assert_eq!(engine.info().family, family_name(family));
        let got = collect(engine.generate(request("tell me", greedy(N))).unwrap());
        assert_eq!(got.usage.prompt_tokens as usize, prompt.len());
        assert_eq!(got.usage.completion_tokens, generated, "{family:?}");
        assert_eq!(
            got.text(),
            String::from_utf8_lossy(&expected),
            "{family:?}: streamed text differs from the greedy loop"
        );
        eprintln!(
            "{family:?}: {generated} tokens in {} pieces, {:?}",
            got.pieces.len(),
            got.finish_reason
        );
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_a_typed_error() {
    let (dir, _) = checkpoint(GlmFamily::ChatGlm3);
    let engine = load_engine(dir.path(), EngineOptions::default()).unwrap();
    let long = "a ".repeat(SEQ_LENGTH);
    let err = engine.generate(request(&long, greedy(4))).err().unwrap();
    assert!(
        matches!(
            err,
            securechat_server::engine::EngineError::PromptTooLong {
                context_length: SEQ_LENGTH,
                ..
            }
        ),
        "{err:?}"
    );
}
