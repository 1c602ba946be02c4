//! ChatGLM3 and GLM-4 plumbing, on tiny random-weight checkpoints this test
//! writes itself (config.json, tokenizer.json, tokenizer_config.json,
//! model.safetensors in the Hugging Face layout). Their output is noise; what
//! is checked is loading, family detection, our pass against
//! candle-transformers' GLM code, the KV cache, batching, the chat format,
//! and streaming through the same Engine the server uses.

mod inference_support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::glm4;
use inference_support::glm_checkpoint::{SEQ_LENGTH, write_checkpoint};
use inference_support::{
    Collected, batched_against_alone, collect, greedy, peak_running, request, run, user,
};
use securechat_crds::v1alpha1::{ModelDtype, ModelFamily as SpecFamily};
use securechat_server::engine::{Engine, GenerationRequest};
use securechat_server::inference::{
    EngineOptions, GlmFamily, InferenceError, LoadedModel, LocalEngine, ModelFamily, Placement,
    ServingOptions, WeightFormat, check_family, detect_family, load_engine, load_model,
    load_model_as,
};
use serde_json::json;

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
        // In f32: what is compared is the cache, not rounding.
        let mut loaded = load_as(dir.path(), ModelDtype::F32).unwrap();
        assert_eq!(loaded.info.family, family_name(family));
        assert_eq!(loaded.info.context_length, SEQ_LENGTH);
        let prompt = loaded.encoder.encode(&user("hello world")).unwrap();
        let first = loaded.model.forward(&prompt, 0).unwrap();
        assert_eq!(first.len(), vocab);
        assert!(first.iter().all(|x| x.is_finite()));

        // Two more tokens through the cache (one step, then a two-token
        // call), against the whole sequence at once.
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

fn load_as(dir: &Path, dtype: ModelDtype) -> Result<LoadedModel, InferenceError> {
    load_model_as(dir, None, WeightFormat::AsStored, Placement::Cpu, dtype)
}

/// The first `n` greedy tokens after a fixed prompt.
fn greedy_tokens(loaded: &mut LoadedModel, n: usize) -> Vec<u32> {
    let prompt = loaded.encoder.encode(&user("tell me more")).unwrap();
    let mut logits = loaded.model.forward(&prompt, 0).unwrap();
    let mut tokens = Vec::new();
    for step in 0..n {
        let t = argmax(&logits);
        tokens.push(t);
        logits = loaded.model.forward(&[t], prompt.len() + step).unwrap();
    }
    tokens
}

const SHARDS: usize = 3;

fn shard_name(i: usize) -> String {
    format!("model-{i:05}-of-{SHARDS:05}.safetensors")
}

/// Splits `model.safetensors` into [`SHARDS`] files named and indexed as
/// Hugging Face writes them (`model.safetensors.index.json`).
fn shard(dir: &Path) {
    let single = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&single, &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    let per = names.len().div_ceil(SHARDS);
    for (i, chunk) in names.chunks(per).enumerate() {
        let file = shard_name(i + 1);
        let part: HashMap<&String, Tensor> =
            chunk.iter().map(|&n| (n, tensors[n].clone())).collect();
        candle_core::safetensors::save(&part, dir.join(&file)).unwrap();
        for name in chunk {
            weight_map.insert((*name).clone(), json!(file));
        }
    }
    assert_eq!(names.chunks(per).count(), SHARDS);
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        json!({"metadata": {"total_size": 0}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    std::fs::remove_file(single).unwrap();
}

#[test]
fn a_sharded_checkpoint_answers_like_the_single_file() {
    for family in FAMILIES {
        let (single, _) = checkpoint(family);
        let (sharded, _) = checkpoint(family);
        shard(sharded.path());
        assert!(!sharded.path().join("model.safetensors").exists());
        let want = greedy_tokens(&mut load_as(single.path(), ModelDtype::Auto).unwrap(), 10);
        let got = greedy_tokens(&mut load_as(sharded.path(), ModelDtype::Auto).unwrap(), 10);
        assert_eq!(got, want, "{family:?}");
    }
}

#[test]
fn a_missing_shard_is_named() {
    let (dir, _) = checkpoint(GlmFamily::Glm4);
    shard(dir.path());
    std::fs::remove_file(dir.path().join(shard_name(2))).unwrap();
    let err = load_as(dir.path(), ModelDtype::Auto)
        .err()
        .expect("load must fail");
    assert!(
        matches!(err, InferenceError::ShardMissing { .. })
            && err.to_string().contains(&shard_name(2))
            && err.to_string().contains("model.safetensors.index.json"),
        "{err}"
    );
    // Without the index the numbering still tells that one is missing.
    std::fs::remove_file(dir.path().join("model.safetensors.index.json")).unwrap();
    let err = load_as(dir.path(), ModelDtype::Auto)
        .err()
        .expect("load must fail");
    assert!(err.to_string().contains(&shard_name(2)), "{err}");
}

/// Every dtype loads and computes the f32 model's logits up to its own
/// rounding: f16 keeps 11 significant bits, bf16 8, so over two layers
/// the logits (|x| up to ~10 here) move by a few hundredths at most.
#[test]
fn every_dtype_loads_and_tracks_the_f32_logits() {
    for family in FAMILIES {
        let (dir, vocab) = checkpoint(family);
        let reference = {
            let mut m = load_as(dir.path(), ModelDtype::F32).unwrap();
            let prompt = m.encoder.encode(&user("hello")).unwrap();
            m.model.forward(&prompt, 0).unwrap()
        };
        let scale = reference.iter().fold(0.0f32, |a, x| a.max(x.abs()));
        for (dtype, tolerance) in [
            (ModelDtype::Auto, 0.02),
            (ModelDtype::F16, 0.02),
            (ModelDtype::BF16, 0.1),
        ] {
            let mut m = load_as(dir.path(), dtype).unwrap();
            let prompt = m.encoder.encode(&user("hello")).unwrap();
            let logits = m.model.forward(&prompt, 0).unwrap();
            assert_eq!(logits.len(), vocab);
            let worst = logits
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            eprintln!("{family:?} {dtype}: max |Δ| {worst} (logits up to {scale})");
            assert!(
                worst <= tolerance * scale,
                "{family:?} {dtype}: logits {worst} off f32's (max |logit| {scale})"
            );
        }
    }
}

#[test]
fn a_dtype_for_a_gguf_file_is_refused() {
    use candle_core::quantized::gguf_file::{Value, write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let arch = Value::String("llama".into());
    let mut file = std::fs::File::create(&path).unwrap();
    write(&mut file, &[("general.architecture", &arch)], &[]).unwrap();
    drop(file);
    let err = load_model_as(
        &path,
        None,
        WeightFormat::AsStored,
        Placement::Cpu,
        ModelDtype::F16,
    )
    .err()
    .expect("load must fail");
    assert!(err.to_string().contains("model.dtype F16"), "{err}");
}

/// candle-transformers' GLM model over the same files: the reference for
/// our pass (it keeps one sequence's cache itself, so it cannot batch).
fn candle_reference(dir: &Path) -> glm4::Model {
    let config: glm4::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    glm4::Model::new(&config, vb).unwrap()
}

fn candle_logits(model: &mut glm4::Model, tokens: &[u32]) -> Vec<f32> {
    let input = Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&input)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Our batched pass computes what candle-transformers' GLM code computes,
/// in f32 (where only summation order differs): after the prompt and after
/// each of three cached steps, for both families (ChatGLM3's fixed rotary
/// base, GLM-4's `rope_ratio`).
#[test]
fn our_pass_computes_candle_transformers_glm_logits() {
    for family in FAMILIES {
        let (dir, _) = checkpoint(family);
        let mut ours = load_as(dir.path(), ModelDtype::F32).unwrap();
        let mut reference = candle_reference(dir.path());
        let prompt = ours.encoder.encode(&user("hello there")).unwrap();
        let mut mine = ours.model.forward(&prompt, 0).unwrap();
        let mut theirs = candle_logits(&mut reference, &prompt);
        for (step, pos) in (prompt.len()..).take(4).enumerate() {
            let scale = theirs.iter().fold(0.0f32, |a, x| a.max(x.abs()));
            assert_eq!(mine.len(), theirs.len());
            let worst = mine
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst <= 1e-4 * scale.max(1.0),
                "{family:?} step {step}: logits differ by {worst} (max |logit| {scale})"
            );
            let next = argmax(&theirs);
            mine = ours.model.forward(&[next], pos).unwrap();
            theirs = candle_logits(&mut reference, &[next]);
        }
    }
}

/// One batched step over three sequences, their blocks interleaved in the
/// pool, gives each the logits it gets alone (f32: up to summation order),
/// for its prompt and for three greedy tokens after it.
#[test]
fn a_batched_step_gives_each_sequence_its_logits_alone() {
    for family in FAMILIES {
        let (dir, _) = checkpoint(family);
        let mut alone = load_as(dir.path(), ModelDtype::F32).unwrap();
        let mut batched = load_as(dir.path(), ModelDtype::F32).unwrap();
        let prompts: Vec<Vec<u32>> = ["hi", "a somewhat longer prompt than that", "third"]
            .iter()
            .map(|p| alone.encoder.encode(&user(p)).unwrap())
            .collect();
        let found = batched_against_alone(&mut alone, &mut batched, &prompts, 4);
        for (i, steps) in found.iter().enumerate() {
            for (step, &(off, same_argmax)) in steps.iter().enumerate() {
                assert!(
                    off <= 1e-4 && same_argmax,
                    "{family:?} sequence {i} step {step}: {off:.1e} of the logit scale off its logits alone"
                );
            }
        }
    }
}

fn glm_engine(dir: &Path, max_sequences: usize) -> Arc<dyn Engine> {
    let loaded = load_as(dir, ModelDtype::F32).unwrap();
    Arc::new(
        LocalEngine::start(
            loaded.model,
            loaded.encoder,
            loaded.info,
            ServingOptions {
                max_sequences,
                prefix_cache: false,
                ..ServingOptions::default()
            },
        )
        .unwrap(),
    )
}

/// Through the engine: several GLM sequences run at once, and each one's
/// greedy answer is the one it gives alone.
#[test]
fn glm_sequences_batch_and_answer_as_each_alone() {
    const TOKENS: u32 = 24;
    for family in FAMILIES {
        let (dir, _) = checkpoint(family);
        let requests: Vec<GenerationRequest> = ["one", "two words", "and three words", "four"]
            .iter()
            .enumerate()
            .map(|(i, p)| request(&format!("{}{p}", "so ".repeat(i)), greedy(TOKENS)))
            .collect();

        let one_at_a_time = glm_engine(dir.path(), 1);
        let alone: Vec<Collected> = requests
            .iter()
            .map(|r| run(one_at_a_time.as_ref(), r.clone()))
            .collect();
        drop(one_at_a_time);

        let batched = glm_engine(dir.path(), requests.len());
        let streams: Vec<_> = requests
            .iter()
            .map(|r| batched.generate(r.clone()).expect("admitted"))
            .collect();
        let most_running = peak_running(batched.as_ref());
        let together: Vec<Collected> = streams.into_iter().map(collect).collect();
        assert!(
            most_running > 1,
            "{family:?}: the engine never ran two GLM sequences at once"
        );
        for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(a.text(), b.text(), "{family:?} sequence {i}");
            assert_eq!(a.usage, b.usage, "{family:?} sequence {i}");
            assert_eq!(a.finish_reason, b.finish_reason, "{family:?} sequence {i}");
        }
    }
}
