//! Prefill and decode speed of the default model, printed as tokens/s.
//!
//!     cargo run --release -p securechat-server --example decode_speed [-- VARIANT] [--json]
//!
//! VARIANT: `as-stored` (default: the file's Q4_1 blocks on our kernels),
//! `q8_0` (requantized at load, our kernels), `candle-kernels` and
//! `candle-kernels-q8_0` (our model on candle's kernels), `stock`.
//!
//! `--json` prints one JSON object instead (timings of every run, the prompt
//! ids, RSS) for scripts/bench-inference-vs-llamacpp.sh, which feeds the same
//! prompt ids to llama.cpp.
//! `stock` runs candle-transformers' `quantized_llama` on the same file, the
//! baseline this module's own implementation replaces.
//!
//! Prefill: a ~200-token prompt from scratch. Decode: 128 greedy steps
//! (end-of-sequence ignored, so every run does the same work). Best of 3
//! runs, each with a different first line. Also prints the resident set
//! size after loading.

use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use securechat_server::engine::{ChatMessage, Role};
use securechat_server::inference::{
    CausalLm, Placement, WeightFormat, default_model_path, load_model_on,
};

/// candle-transformers' stock model behind our trait, for comparison.
struct Stock(ModelWeights);

impl CausalLm for Stock {
    fn forward(
        &mut self,
        tokens: &[u32],
        pos: usize,
    ) -> Result<Vec<f32>, securechat_server::inference::InferenceError> {
        let input = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        Ok(self.0.forward(&input, pos)?.squeeze(0)?.to_vec1()?)
    }
    fn context_length(&self) -> usize {
        4096
    }
    fn vocab_size(&self) -> usize {
        49152
    }
}

const RUNS: usize = 3;
const DECODE_TOKENS: usize = 128;

fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for i in 0..v.len() {
        if v[i] > v[best] {
            best = i;
        }
    }
    best as u32
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let arg = args.iter().find(|a| !a.starts_with("--"));
    let (format, placement, stock) = match arg.map(String::as_str) {
        None | Some("as-stored") => (WeightFormat::AsStored, Placement::Cpu, false),
        Some("q8_0") => (WeightFormat::Q8_0, Placement::Cpu, false),
        Some("candle-kernels") => (WeightFormat::AsStored, Placement::CpuCandleKernels, false),
        Some("candle-kernels-q8_0") => (WeightFormat::Q8_0, Placement::CpuCandleKernels, false),
        Some("stock") => (WeightFormat::AsStored, Placement::Cpu, true),
        Some(other) => {
            return Err(format!(
                "unknown variant {other:?} (as-stored | q8_0 | candle-kernels | candle-kernels-q8_0 | stock)"
            )
            .into());
        }
    };
    let path = default_model_path().ok_or("HOME is not set")?;
    let file_mib = std::fs::metadata(&path)
        .map_err(|e| format!("{}: {e}; run `make model`", path.display()))?
        .len() as f64
        / (1024.0 * 1024.0);
    let t = Instant::now();
    let mut loaded = load_model_on(&path, None, format, placement)?;
    if stock {
        let mut file = std::fs::File::open(&path)?;
        let content = gguf_file::Content::read(&mut file)?;
        loaded.model = Box::new(Stock(ModelWeights::from_gguf(
            content,
            &mut file,
            &Device::Cpu,
        )?));
    }
    let load = t.elapsed();
    let rss = rss_mib().unwrap_or(f64::NAN);

    let body =
        "The quick brown fox jumps over the lazy dog while the farmer counts sheep in the meadow. "
            .repeat(10);
    let (mut best_prefill, mut best_decode) = (Duration::MAX, Duration::MAX);
    let mut prompt_len = 0;
    let (mut prompts, mut prefill_s, mut decode_s) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        let content = format!("Run {run}: summarise this text.\n{body}");
        let prompt = loaded.encoder.encode(&[ChatMessage {
            role: Role::User,
            content,
        }])?;
        prompt_len = prompt.len();
        let t = Instant::now();
        let mut logits = loaded.model.forward(&prompt, 0)?;
        let prefill = t.elapsed();
        let t = Instant::now();
        for step in 0..DECODE_TOKENS {
            let next = argmax(&logits);
            logits = loaded.model.forward(&[next], prompt.len() + step)?;
        }
        let decode = t.elapsed();
        best_prefill = best_prefill.min(prefill);
        best_decode = best_decode.min(decode);
        prefill_s.push(prefill.as_secs_f64());
        decode_s.push(decode.as_secs_f64());
        prompts.push(prompt);
    }
    if json {
        let out = serde_json::json!({
            "prompts": prompts,
            "prompt_tokens": prompt_len,
            "decode_tokens": DECODE_TOKENS,
            "prefill_s": prefill_s,
            "decode_s": decode_s,
            "rss_after_load_mib": rss,
            "rss_after_run_mib": rss_mib().unwrap_or(f64::NAN),
            "gguf_mib": file_mib,
            "load_s": load.as_secs_f64(),
        });
        println!("{out}");
        return Ok(());
    }
    let variant = if stock {
        "candle quantized_llama".to_owned()
    } else {
        format!("{format:?}, {placement:?}")
    };
    println!(
        "model     {} ({variant}), loaded in {:.2}s",
        path.display(),
        load.as_secs_f64()
    );
    println!(
        "threads   {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "prefill   {prompt_len} tokens in {:.1} ms = {:.1} tok/s",
        best_prefill.as_secs_f64() * 1e3,
        prompt_len as f64 / best_prefill.as_secs_f64()
    );
    println!(
        "decode    {DECODE_TOKENS} tokens in {:.1} ms = {:.1} tok/s",
        best_decode.as_secs_f64() * 1e3,
        DECODE_TOKENS as f64 / best_decode.as_secs_f64()
    );
    println!(
        "rss       {rss:.0} MiB after load ({:.2}x the {file_mib:.0} MiB GGUF)",
        rss / file_mib
    );
    Ok(())
}
