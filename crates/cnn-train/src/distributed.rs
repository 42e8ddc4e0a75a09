//! Data-parallel training over a [`Collective`]: what every rank does
//! between the halves of a step, at the start, and after a resume.
//!
//! Each rank holds a whole copy of the model and takes its share of every
//! global batch ([`cnn_data::DataLoader::shard`]); its loss is the global
//! batch's mean restricted to its samples, so the gradients summed over the
//! ranks ([`allreduce_gradients`]) are the gradients of the global batch, and
//! every rank then takes the same optimizer step. MPI's ranks come from
//! `cnn_train::Mpi` (feature `distributed`); [`cnn_tensor::collective::LocalGroup`]
//! runs the same code on threads. [`crate::Trainer::with_group`] puts it all together.

use cnn_optim::Optimizer;
use cnn_tensor::collective::{broadcast_result, sum_across, Collective};
use cnn_tensor::{Error, Float, Layer, Result};

/// Gradients are summed in buffers of at most this many values: few enough
/// calls that per-message latency does not count, small enough that the
/// staging copy stays a fraction of the model (ResNet-50 takes 2 buffers).
pub const BUCKET_VALUES: usize = 1 << 22;

/// Replaces every parameter and buffer of `model` on every rank by rank 0's,
/// so that all ranks start from the same weights whatever their own
/// initialization drew.
///
/// # Errors
/// [`Error::Distributed`] when the ranks' models differ in their tensors (the
/// first key that differs is named) or the transport fails.
pub fn broadcast_parameters<T: Float>(
    model: &mut dyn Layer<T>,
    group: &dyn Collective,
) -> Result<()> {
    if group.size() <= 1 {
        return Ok(());
    }
    // Shapes first, so that a rank with another model fails with its name
    // instead of reading rank 0's values into the wrong tensors.
    let mut layout = String::new();
    model.visit("", &mut |key, p| layout.push_str(&format!("{key}{:?};", p.value().shape())));
    let mut theirs = layout.clone().into_bytes();
    group.broadcast_bytes(&mut theirs)?;
    if theirs != layout.as_bytes() {
        let theirs = String::from_utf8_lossy(&theirs);
        let first = layout.split(';').zip(theirs.split(';')).find(|(a, b)| a != b);
        return Err(Error::distributed(format!(
            "rank {} has another model than rank 0: {}",
            group.rank(),
            first.map_or("a different number of tensors".to_string(), |(a, b)| format!(
                "{a} here, {b} on rank 0"
            ))
        )));
    }
    let mut bytes = Vec::new();
    if group.rank() == 0 {
        model.visit("", &mut |_, p| {
            bytes.extend(p.value().iter().flat_map(|v| v.as_f64().to_le_bytes()));
        });
    }
    group.broadcast_bytes(&mut bytes)?;
    let mut values = bytes.chunks_exact(8).map(|b| {
        let mut le = [0u8; 8];
        le.copy_from_slice(b);
        T::of(f64::from_le_bytes(le))
    });
    model.visit_mut("", &mut |_, p| {
        p.value_mut().iter_mut().zip(&mut values).for_each(|(v, w)| *v = w);
    });
    Ok(())
}

/// Sums the gradient of every trainable parameter across the ranks, in
/// fused buffers of at most [`BUCKET_VALUES`] (packed in `visit` order, so
/// every rank packs the same layout); frozen parameters and buffers are not
/// sent. Returns the number of values summed.
///
/// # Errors
/// [`Error::Distributed`] when the transport fails.
pub fn allreduce_gradients<T: Float>(
    model: &mut dyn Layer<T>,
    group: &dyn Collective,
) -> Result<usize> {
    allreduce_in_buckets(model, group, BUCKET_VALUES)
}

fn allreduce_in_buckets<T: Float>(
    model: &mut dyn Layer<T>,
    group: &dyn Collective,
    bucket_values: usize,
) -> Result<usize> {
    if group.size() <= 1 {
        return Ok(0);
    }
    let mut sizes = Vec::new();
    model.visit("", &mut |_, p| {
        if p.trainable && !p.buffer {
            sizes.push(p.grad.len());
        }
    });
    let total: usize = sizes.iter().sum();
    let mut bucket: Vec<T> = Vec::with_capacity(total.min(bucket_values));
    // Tensors go whole into a bucket; one larger than a bucket gets one of its own.
    let mut bounds = Vec::new();
    let (mut start, mut filled) = (0, 0);
    for (i, &n) in sizes.iter().enumerate() {
        if filled > 0 && filled + n > bucket_values {
            bounds.push(start..i);
            (start, filled) = (i, 0);
        }
        filled += n;
    }
    bounds.push(start..sizes.len());
    let mut tensor = 0;
    for range in bounds {
        bucket.clear();
        let mut k = 0;
        model.visit("", &mut |_, p| {
            if p.trainable && !p.buffer {
                if range.contains(&k) {
                    bucket.extend(p.grad.iter().copied());
                }
                k += 1;
            }
        });
        sum_across(group, &mut bucket)?;
        let mut values = bucket.iter().copied();
        let mut k = 0;
        model.visit_mut("", &mut |_, p| {
            if p.trainable && !p.buffer {
                if range.contains(&k) {
                    p.grad.iter_mut().zip(&mut values).for_each(|(g, v)| *g = v);
                }
                k += 1;
            }
        });
        tensor += range.len();
    }
    debug_assert_eq!(tensor, sizes.len());
    Ok(total)
}

/// Rank 0's optimizer state on every rank (after a resume, where only rank
/// 0 read the checkpoint).
///
/// # Errors
/// [`Error::Distributed`] when the transport fails; [`Error::Format`] when
/// the state does not deserialize.
pub fn broadcast_optimizer<T: Float>(
    optimizer: &mut Optimizer<T>,
    group: &dyn Collective,
) -> Result<()> {
    if group.size() <= 1 {
        return Ok(());
    }
    let bytes = broadcast_result(group, || optimizer.state_bytes("rank 0's optimizer state"))?;
    if group.rank() != 0 {
        optimizer.load_state_bytes(&bytes, "rank 0's optimizer state")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnn_nn::{Linear, LinearConfig, Sequential};
    use cnn_tensor::collective::LocalGroup;
    use cnn_tensor::random::seeded_rng;

    fn net(seed: u64) -> Sequential<f64> {
        let mut rng = seeded_rng(seed);
        Sequential::new()
            .push(Linear::<f64>::new(LinearConfig::new(3, 4), &mut rng).unwrap())
            .push(Linear::<f64>::new(LinearConfig::new(4, 2), &mut rng).unwrap())
    }

    fn on_threads<R: Send>(size: usize, f: impl Fn(LocalGroup) -> R + Sync) -> Vec<R> {
        std::thread::scope(|s| {
            let hs: Vec<_> = LocalGroup::new(size).into_iter().map(|g| s.spawn(|| f(g))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn values(m: &dyn Layer<f64>, grads: bool) -> Vec<f64> {
        let mut v = Vec::new();
        m.visit("", &mut |_, p| v.extend(if grads { p.grad.iter() } else { p.value().iter() }));
        v
    }

    #[test]
    fn every_rank_gets_rank_zeros_weights() {
        let got = on_threads(3, |g| {
            let mut m = net(10 + g.rank() as u64);
            broadcast_parameters(&mut m, &g).unwrap();
            values(&m, false)
        });
        assert_eq!(got[0], values(&net(10), false));
        assert!(got.iter().all(|v| v == &got[0]));
    }

    #[test]
    fn another_model_on_a_rank_is_named() {
        let got = on_threads(2, |g| {
            let mut m = net(0);
            if g.rank() == 1 {
                m = m
                    .push(Linear::<f64>::new(LinearConfig::new(2, 2), &mut seeded_rng(0)).unwrap());
            }
            broadcast_parameters(&mut m, &g).map_err(|e| e.to_string())
        });
        // Rank 0 sends its values on unless rank 1 has already left: which
        // comes first is the threads' timing (it failed the suite once).
        match &got[0] {
            Ok(()) => {}
            Err(e) => assert_eq!(e, "distributed: rank 1 left the group"),
        }
        let e = got[1].clone().unwrap_err();
        assert!(e.starts_with("distributed: rank 1 has another model than rank 0"), "{e}");
    }

    #[test]
    fn gradients_are_summed_and_frozen_ones_left_alone() {
        let got = on_threads(2, |g| {
            let mut m = net(0);
            let r = g.rank() as f64 + 1.0;
            m.visit_mut("", &mut |key, p| {
                p.grad.fill(r);
                if key.starts_with("1.") {
                    p.trainable = false;
                }
            });
            let n = allreduce_gradients(&mut m, &g).unwrap();
            (n, values(&m, true), g.rank())
        });
        for (n, grads, rank) in got {
            assert_eq!(n, 3 * 4 + 4, "only layer 0's weight and bias travel");
            let (first, frozen) = grads.split_at(16);
            assert!(first.iter().all(|&v| v == 3.0));
            assert!(frozen.iter().all(|&v| v == rank as f64 + 1.0));
        }
    }

    #[test]
    fn any_bucket_size_gives_the_same_sums() {
        // Buckets of 1, 5 (tensors of 12, 4, 8, 2 values: several per bucket
        // and tensors larger than one) and everything at once.
        let sums: Vec<Vec<Vec<f64>>> = [1, 5, 13, BUCKET_VALUES]
            .iter()
            .map(|&bucket| {
                on_threads(3, |g| {
                    let mut m = net(0);
                    let mut k = 0.0;
                    m.visit_mut("", &mut |_, p| {
                        p.grad.iter_mut().for_each(|v| {
                            k += 1.0;
                            *v = k * (g.rank() as f64 + 0.5);
                        })
                    });
                    allreduce_in_buckets(&mut m, &g, bucket).unwrap();
                    values(&m, true)
                })
            })
            .collect();
        let want: Vec<f64> = (1..=26).map(|k| k as f64 * 4.5).collect();
        for per_rank in sums {
            assert!(per_rank.iter().all(|v| v == &want), "{per_rank:?}");
        }
    }
}
