//! Sensitive-data filter throughput (MB/s): one-shot redaction of a whole
//! message, and the streaming filter fed token-sized chunks as SSE output
//! arrives. The corpus is chat text in English and Chinese with an e-mail
//! address, a Chinese mobile number and a card number per ~1.1 KB
//! paragraph (`benches/corpus.txt`, also used for the seed comparison in
//! `scripts/bench-server-vs-seed.sh`).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use securechat_crds::v1alpha1::SensitiveDataSpec;
use securechat_server::pii::Filter;
use securechat_server::pii::StreamFilter;

const PARAGRAPH: &str = include_str!("corpus.txt");

/// `bytes` of corpus text, cut at a character boundary.
fn corpus(bytes: usize) -> String {
    let mut text = PARAGRAPH.repeat(bytes / PARAGRAPH.len() + 1);
    let mut cut = bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text
}

/// Token-sized pieces (about 4 bytes, as a tokenizer emits them).
fn chunks(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + 4).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        out.push(&text[start..end]);
        start = end;
    }
    out
}

fn bench(c: &mut Criterion) {
    let filter = Filter::new(&SensitiveDataSpec::default()).expect("default filter compiles");
    let mut group = c.benchmark_group("filter");
    for size in [4 * 1024, 64 * 1024] {
        let text = corpus(size);
        // The corpus must exercise the detectors, or this measures a scan.
        assert!(filter.redact(&text).1.len() >= 2 * (size / PARAGRAPH.len()));
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::new("one_shot", size), &text, |b, text| {
            b.iter(|| filter.redact(text))
        });
        let pieces = chunks(&text);
        group.bench_with_input(BenchmarkId::new("streaming", size), &pieces, |b, pieces| {
            b.iter(|| {
                let mut stream = StreamFilter::new(&filter);
                let mut out = 0;
                for piece in pieces {
                    out += stream.push(piece).text.len();
                }
                out + stream.finish().text.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
