//! Per-layer key/value cache of the candle forward pass, written in place
//! (the pass on our kernels uses `securechat_kernels::attention::KvCache`,
//! f16 rows).
//!
//! candle's stock llama concatenates the cache with each new token (a full
//! copy per token per layer). Here each layer owns a buffer with spare
//! capacity; new keys are written into it and attention reads a narrowed
//! view. Capacity grows geometrically, so copies are rare, and memory follows
//! the longest conversation rather than the whole context window.

use candle_core::{DType, Device, Result, Tensor};

/// Smallest capacity allocated, in positions: one typical chat turn.
const MIN_CAPACITY: usize = 256;

pub struct CandleKvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    n_kv_head: usize,
    head_dim: usize,
    max_len: usize,
    capacity: usize,
    len: usize,
    device: Device,
}

impl CandleKvCache {
    pub fn new(
        n_layer: usize,
        n_kv_head: usize,
        head_dim: usize,
        max_len: usize,
        device: &Device,
    ) -> Self {
        Self {
            layers: vec![None; n_layer],
            n_kv_head,
            head_dim,
            max_len,
            capacity: 0,
            len: 0,
            device: device.clone(),
        }
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Forgets everything (the buffers are kept for the next request).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Makes room for `extra` more positions in every layer.
    pub fn reserve(&mut self, extra: usize) -> Result<()> {
        let needed = self.len + extra;
        if needed > self.max_len {
            candle_core::bail!(
                "KV cache: {needed} positions exceed the context of {}",
                self.max_len
            );
        }
        if needed <= self.capacity {
            return Ok(());
        }
        let capacity = needed
            .max(self.capacity * 2)
            .max(MIN_CAPACITY)
            .min(self.max_len);
        let shape = (self.n_kv_head, capacity, self.head_dim);
        for layer in &mut self.layers {
            let k = Tensor::zeros(shape, DType::F32, &self.device)?;
            let v = Tensor::zeros(shape, DType::F32, &self.device)?;
            if let Some((old_k, old_v)) = layer.as_ref()
                && self.len > 0
            {
                k.slice_set(&old_k.narrow(1, 0, self.len)?, 1, 0)?;
                v.slice_set(&old_v.narrow(1, 0, self.len)?, 1, 0)?;
            }
            *layer = Some((k, v));
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Writes `k`, `v` (`[n_kv_head, seq, head_dim]`) at the current end of
    /// `layer` and returns views over everything cached for it so far.
    /// [`Self::reserve`] must have made room, and [`Self::advance`] is called
    /// once all layers are written.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let seq = k.dim(1)?;
        let Some((kc, vc)) = self.layers.get(layer).and_then(Option::as_ref) else {
            candle_core::bail!("KV cache: layer {layer} has no buffer; call reserve first")
        };
        if self.len + seq > self.capacity {
            candle_core::bail!("KV cache: no room for {seq} positions; call reserve first");
        }
        kc.slice_set(&k.contiguous()?, 1, self.len)?;
        vc.slice_set(&v.contiguous()?, 1, self.len)?;
        Ok((
            kc.narrow(1, 0, self.len + seq)?,
            vc.narrow(1, 0, self.len + seq)?,
        ))
    }

    pub fn advance(&mut self, seq: usize) {
        self.len += seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_survive_growth() -> Result<()> {
        let dev = Device::Cpu;
        let mut cache = CandleKvCache::new(1, 2, 4, 1024, &dev);
        let mut expected = Vec::new();
        for step in 0..300u32 {
            let k = Tensor::full(step as f32, (2, 1, 4), &dev)?;
            cache.reserve(1)?;
            let (kv, vv) = cache.append(0, &k, &k)?;
            cache.advance(1);
            expected.push(step as f32);
            assert_eq!(kv.dims(), &[2, step as usize + 1, 4]);
            let firsts: Vec<f32> = vv
                .narrow(0, 1, 1)?
                .narrow(2, 3, 1)?
                .flatten_all()?
                .to_vec1()?;
            assert_eq!(firsts, expected);
        }
        Ok(())
    }

    #[test]
    fn refuses_past_the_context() {
        let mut cache = CandleKvCache::new(1, 1, 1, 8, &Device::Cpu);
        assert!(cache.reserve(9).is_err());
        assert!(cache.reserve(8).is_ok());
    }
}
