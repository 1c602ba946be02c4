//! Parity with llama.cpp on the same GGUF: token ids of ≥200 strings, greedy
//! continuations of 5 prompts, first-step logits, and bit-for-bit logits over
//! the first positions.
//!
//! llama.cpp comes from the dev venv that scripts/llama-cpp-venv.sh builds
//! once into ~/.cache/securechat (`make test` runs it first). Without the
//! venv these tests fail and name the script; they never skip.
//!
//! On x86-64 CPUs with AVX-512 (the machines this project runs on, and
//! where llama.cpp's native build takes its AVX-512 paths) our forward
//! pass does llama.cpp's arithmetic in llama.cpp's order: the same
//! activation rounding, f16 cache, lane orders of every sum, and `exp` (see
//! `securechat_kernels::exp`). The logits are then equal bit for bit, after
//! the prompt and after every one of 32 greedy steps, on all five prompts,
//! so greedy agrees on 5 of 5.
//!
//! Other CPUs get a llama.cpp that sums in 8 lanes with another `exp`; one
//! flipped bit there can move an 8-bit activation and, within a few
//! positions, tenths of a logit. The stated tolerance, asserted
//! everywhere: mean |Δlogit| over the vocabulary ≤ 1.5 on any prompt and ≤
//! 0.6 averaged over the prompts, and llama.cpp's top token in our top 5.
//! Greedy agreement (the same first 32 tokens on at least 4 of 5 prompts)
//! is asserted on AVX-512 CPUs only: against llama.cpp's AVX2-only build
//! (an AMD EPYC without AVX-512, 2026-12-07) the means were 0.09–0.52
//! (0.27 overall) but greedy agreed on 0 of 5, diverging at tokens 1–22
//! where two candidates are within those tenths.
//!
//! Our own logits do not depend on the CPU (the SIMD kernels equal the
//! scalar ones bit for bit), so `single_sequence_logits_are_pinned` keeps
//! the logits that equalled the AVX-512 build's, without llama.cpp, on
//! every machine and in `make test`.

mod inference_support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use inference_support::{model_path, user};
use securechat_server::inference::{LoadedModel, WeightFormat, load_model};

const STEPS: usize = 32;
const MAX_MEAN_ERROR: f32 = 0.6;
/// One prompt may stray further: with 8-bit activations a rounding flip in
/// one block moves every later logit (see inference_reference.rs).
const MAX_MEAN_ERROR_ONE_PROMPT: f32 = 1.5;

const PROMPTS: [&str; 5] = [
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "Explain what a hash map is in one sentence.",
    "List three prime numbers.",
    "Translate 'good morning' into Spanish.",
];

fn venv_python() -> PathBuf {
    let venv = std::env::var_os("SECURECHAT_LLAMA_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/securechat/venv-llama-cpp")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/llama-cpp-venv.sh",
        python.display()
    );
    python
}

/// ≥200 strings: hand-picked cases and systematic variations of them.
fn texts() -> Vec<String> {
    let bases = [
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "don't, won't, I'LL, you'Re, we've",
        "数字和中文混合：2024年11月26日",
        "我爱自然语言处理。",
        "日本語のテキストとカタカナ",
        "한국어 문장입니다",
        "Ελληνικά και русский текст",
        "emoji 🦀🚀🔥 family 👩‍👩‍👧 flag 🇫🇷",
        "12345678901234567890",
        "3.14159 2.71828 -42 +7 1e-9 0x1F",
        "phone 138-0013-8000, id 11010519491231002X",
        "2024-11-26T15:00:00Z 10:30:59.123",
        "v1.2.3-rc.4+build.5",
        "0123456789 9876543210 000 00 0",
        "1,000,000.00 $ 99.99€",
        "fn main() { println!(\"{}\", 1 + 2); }",
        "def f(x):\n    return x ** 2\n",
        "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
        "<div class=\"a\">text</div>",
        "SELECT * FROM users WHERE id = 1;",
        "    four leading spaces",
        "trailing spaces    ",
        "tabs\t\tand\tnewlines\n\n\n",
        "a  b   c    d     e",
        "\n",
        " ",
        "   ",
        "!!!???...",
        "https://example.com/path?query=1&x=y#frag",
        "user@example.com",
        "CamelCaseIdentifier snake_case_identifier",
        "café naïve résumé Zürich",
        "<|im_start|>user\nhi<|im_end|>",
        "<|endoftext|> is not special here",
        "x=1;y=2;z=x+y",
        "Mr. Smith's dog—a beagle—barked.",
        "ＦＵＬＬＷＩＤＴＨ　ｔｅｘｔ",
        "\u{200b}zero width\u{feff}",
        "mixed 中文 and English 123 🚀",
        "line one\r\nline two\r\n",
        "a\u{0301} combining accent",
        "////\\\\\\\\||||",
        "The year 1999 and 2000.",
        "人工智能正在改变世界，我们需要负责任地使用它。",
        "请把下面的句子翻译成英文：今天天气很好。",
        "繁體中文與简体中文",
        "😀😃😄😁😆😅😂🤣",
        "👍🏽 ✌🏿 🧑🏻‍💻",
        "    if x:\n        y()\n    else:\n        z()",
        "#include <stdio.h>\nint main(void) { return 0; }",
        "let v: Vec<u8> = vec![0xFF; 16];",
        "$ ls -la | grep '^d' && echo \"done\"",
        "\t\t\t\t",
        "\n\n\n\n\n",
        "a\n \n  \n   \nb",
        "          ten spaces",
        "Ünïcödé ßtraße ﬁ ligature",
        "¿Qué? ¡Sí! «quotes» „German“",
        "— – - ‐ dashes … ellipsis",
        "The GPU has 80GB of HBM3 memory at 3.35TB/s.",
        "I'm, you're, he's, she'd, they'll, it's, we've",
        "ALLCAPS lowercase MiXeD",
        "#hashtag @mention &amp; %20 ~tilde `backtick`",
    ];
    let mut out: Vec<String> = Vec::new();
    for b in bases {
        for variant in [
            b.to_owned(),
            format!(" {b}"),
            format!("{b}\n"),
            b.to_uppercase(),
            format!("{b} 42"),
        ] {
            // Upper-casing leaves CJK and digits alone: keep each string once.
            if !out.contains(&variant) {
                out.push(variant);
            }
        }
    }
    out
}

#[derive(serde::Deserialize)]
struct Reference {
    tokens: Vec<Vec<u32>>,
    greedy: Vec<Vec<u32>>,
    logits: Vec<Vec<f32>>,
    /// Per prompt: SHA-256 of the little-endian f32 logits after the
    /// prompt and after each greedy step.
    step_sha256: Vec<Vec<String>>,
}

fn sha256_hex(logits: &[f32]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for v in logits {
        h.update(v.to_le_bytes());
    }
    securechat_crds::hex::hex(&h.finalize())
}

fn reference(texts: &[String], prompts: &[Vec<u32>]) -> Reference {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/llama_cpp_reference.py");
    let request = serde_json::json!({
        "model": model_path(),
        "texts": texts,
        "prompts": prompts,
        "steps": STEPS,
    });
    let mut child = Command::new(venv_python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start llama.cpp reference");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "llama.cpp reference failed (see stderr above); rebuild the venv with scripts/llama-cpp-venv.sh"
    );
    serde_json::from_slice(&out.stdout).expect("reference JSON")
}

/// Our model on the file's own Q4_1 blocks (as llama.cpp multiplies them),
/// the five prompts' ids, and llama.cpp's answers for them.
fn prompts_with_reference() -> (LoadedModel, Vec<Vec<u32>>, Reference) {
    let ours = load_model(&model_path(), None, WeightFormat::AsStored).unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| ours.encoder.encode(&user(p)).unwrap())
        .collect();
    let reference = reference(&[], &prompts);
    (ours, prompts, reference)
}

fn top(v: &[f32], n: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..v.len() as u32).collect();
    idx.sort_by(|&a, &b| v[b as usize].total_cmp(&v[a as usize]));
    idx.truncate(n);
    idx
}

#[test]
#[ignore = "needs the llama.cpp venv (scripts/llama-cpp-venv.sh); run with `make check-all`"]
fn token_ids_match_llama_cpp_on_200_strings() {
    let ours = load_model(&model_path(), None, WeightFormat::AsStored).unwrap();
    let texts = texts();
    assert!(texts.len() >= 200, "only {} strings", texts.len());
    let reference = reference(&texts, &[]);
    assert_eq!(reference.tokens.len(), texts.len());

    let mismatched: Vec<String> = texts
        .iter()
        .zip(&reference.tokens)
        .filter_map(|(t, theirs)| {
            let mine = ours.encoder.tokenizer.encode_text(t).unwrap();
            (&mine != theirs).then(|| format!("{t:?}: ours {mine:?} llama.cpp {theirs:?}"))
        })
        .collect();
    eprintln!(
        "{} of {} strings tokenize as llama.cpp does",
        texts.len() - mismatched.len(),
        texts.len()
    );
    assert!(
        mismatched.is_empty(),
        "{} of {} strings tokenize differently:\n{}",
        mismatched.len(),
        texts.len(),
        mismatched.join("\n")
    );
}

#[test]
#[ignore = "needs the llama.cpp venv (scripts/llama-cpp-venv.sh); run with `make check-all`"]
fn greedy_output_and_logits_match_llama_cpp() {
    let (mut ours, prompts, reference) = prompts_with_reference();
    let mut agreeing = 0;
    let mut sum = 0.0;
    for ((prompt, ids), (their_greedy, their_logits)) in PROMPTS
        .iter()
        .zip(&prompts)
        .zip(reference.greedy.iter().zip(&reference.logits))
    {
        let mut logits = ours.model.forward(ids, 0).unwrap();
        let mean = logits
            .iter()
            .zip(their_logits)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / logits.len() as f32;
        let max = logits
            .iter()
            .zip(their_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            mean <= MAX_MEAN_ERROR_ONE_PROMPT,
            "{prompt:?}: mean |Δlogit| {mean}"
        );
        assert!(
            top(&logits, 5).contains(&top(their_logits, 1)[0]),
            "{prompt:?}: llama.cpp's top token not in our top 5"
        );
        sum += mean;

        let mut greedy = Vec::new();
        for pos in ids.len()..ids.len() + STEPS {
            let t = top(&logits, 1)[0];
            greedy.push(t);
            logits = ours.model.forward(&[t], pos).unwrap();
        }
        let same = greedy == *their_greedy;
        agreeing += usize::from(same);
        let first_difference = greedy
            .iter()
            .zip(their_greedy)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "{prompt:?}: mean |Δ| {mean:.3}, max |Δ| {max:.3}, greedy {STEPS} {}",
            if same {
                "same".to_owned()
            } else {
                format!("differs from token {first_difference}")
            }
        );
    }
    let mean = sum / PROMPTS.len() as f32;
    eprintln!("mean |Δlogit| over the prompts: {mean:.3}; greedy agrees on {agreeing} of 5");
    assert!(
        mean <= MAX_MEAN_ERROR,
        "mean |Δlogit| over the prompts {mean}"
    );
    if has_avx512() {
        assert!(agreeing >= 4, "greedy agrees on {agreeing} of 5 prompts");
    } else {
        eprintln!(
            "this CPU has no AVX-512: greedy agreement is reported, not asserted (see the module doc)"
        );
    }
}

/// Whether llama.cpp's native build here takes the AVX-512 paths whose
/// arithmetic ours reproduces.
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// SHA-256 over the little-endian f32 logits after each prompt and after
/// each of 32 greedy steps (our own argmax), recorded at 494808f, the
/// engine before continuous batching, whose logits equalled llama.cpp's
/// AVX-512 build bit for bit. The batched engine's single sequence gives
/// the same bits (checked against a build of 494808f on 2026-12-07).
const PINNED_LOGITS_SHA256: [&str; 5] = [
    "8c303fbda40f37b5b82ca44e3a4ec84f70fa440c3edea71d5feabb641ee3d192",
    "59525dab08e88d2ba192519ca299a58593e891e0935028d81b4711803ce5caa7",
    "f85e0b42d682e01d1d13ea03ee8874bb7c16089d1a066b923c966e08ed455cb5",
    "04131f6655a21fa63abc7152fdeb398fe90be40ea5bc31f7f2fce16998b6a4d9",
    "78958da1b2ca42ca315d99e9d65d4b8ca23a5f52ebac2e58d95601e8e96f2c1d",
];

/// Our single-sequence logits, bit for bit, on any CPU and without
/// llama.cpp: a change here is a change of arithmetic (summation order,
/// rounding, `exp`), which parity with llama.cpp does not survive.
#[test]
fn single_sequence_logits_are_pinned() {
    use sha2::{Digest, Sha256};
    let mut ours = load_model(&model_path(), None, WeightFormat::AsStored).unwrap();
    let mut digests = Vec::new();
    for prompt in PROMPTS {
        let ids = ours.encoder.encode(&user(prompt)).unwrap();
        let mut digest = Sha256::new();
        let mut logits = ours.model.forward(&ids, 0).unwrap();
        for pos in ids.len()..=ids.len() + STEPS {
            for v in &logits {
                digest.update(v.to_le_bytes());
            }
            if pos == ids.len() + STEPS {
                break;
            }
            logits = ours.model.forward(&[top(&logits, 1)[0]], pos).unwrap();
        }
        digests.push(securechat_crds::hex::hex(&digest.finalize()));
    }
    assert_eq!(
        digests, PINNED_LOGITS_SHA256,
        "our logits changed, per prompt (after the prompt and {STEPS} greedy steps)"
    );
}

/// On an AVX-512 CPU: every prompt's logits, and the logits after each of
/// 32 greedy steps, equal llama.cpp's bit for bit (see the module doc).
#[test]
#[ignore = "needs the llama.cpp venv (scripts/llama-cpp-venv.sh); run with `make check-all`"]
fn logits_equal_llama_cpp_bit_for_bit_at_every_step() {
    assert!(
        has_avx512(),
        "this CPU has no AVX-512: llama.cpp's build here sums and rounds differently, so \
         bit-for-bit parity cannot be checked; run this on an AVX-512 machine, and here \
         `cargo test -p securechat-server --test inference_llamacpp -- --include-ignored \
         greedy_output single_sequence` (the tolerance and our pinned logits)"
    );
    let (mut ours, prompts, reference) = prompts_with_reference();
    for ((prompt, ids), (theirs, their_greedy)) in PROMPTS
        .iter()
        .zip(&prompts)
        .zip(reference.step_sha256.iter().zip(&reference.greedy))
    {
        assert_eq!(theirs.len(), STEPS + 1);
        let mut logits = ours.model.forward(ids, 0).unwrap();
        for (step, their_digest) in theirs.iter().enumerate() {
            assert_eq!(
                &sha256_hex(&logits),
                their_digest,
                "{prompt:?}: logits differ from llama.cpp's after {step} greedy steps"
            );
            if step == STEPS {
                break;
            }
            // Fed llama.cpp's token, so a difference shows at its step.
            logits = ours
                .model
                .forward(&[their_greedy[step]], ids.len() + step)
                .unwrap();
        }
    }
}
