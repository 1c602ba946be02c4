//! Tiny random-weight ChatGLM3 / GLM-4 checkpoints in the Hugging Face
//! layout (config.json, tokenizer.json, tokenizer_config.json,
//! model.safetensors), written by the tests that need one.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use securechat_server::inference::GlmFamily;
use serde_json::json;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{AddedToken, Tokenizer};

pub const HIDDEN: usize = 32;
pub const HEADS: usize = 4;
pub const KV_GROUPS: usize = 2;
pub const FFN: usize = 48;
pub const LAYERS: usize = 2;
pub const SEQ_LENGTH: usize = 96;

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
pub fn write_checkpoint(dir: &Path, family: GlmFamily, seed: u64) -> usize {
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
