//! The rectifier with its sign mask, the one rule the ReLU layer (`cnn_act`)
//! and the norm that applies a ReLU in its own pass (`cnn_norm`, fused in
//! training) share, so that both give the same bits.

use crate::Float;

crate::simd_fn! {
    /// `y ← y` where `y > 0`, else `y·slope` (ReLU: slope 0, so −0 for a
    /// negative and NaN kept), in place, recording `signs[i] = (y_i > 0)`:
    /// all a rectifier's backward needs.
    pub fn rectify_with_signs<T: Float>(ys: &mut [T], signs: &mut [u8], slope: T) = rectify_body
}

#[inline(always)]
fn rectify_body<T: Float>(ys: &mut [T], signs: &mut [u8], slope: T) {
    // Branch-free selects on values held in registers (a branch on the sign
    // mispredicts half the time): this compiles to vector blends.
    let zero = T::zero();
    for (v, m) in ys.iter_mut().zip(signs) {
        let x = *v;
        let pos = x > zero;
        *m = u8::from(pos);
        *v = if pos { x } else { x * slope };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positives_scales_the_rest_and_records_the_signs() {
        let mut y = [2.0f32, -3.0, 0.0, f32::NAN, -0.5];
        let mut signs = [9u8; 5];
        rectify_with_signs(&mut y, &mut signs, 0.0);
        assert_eq!(signs, [1, 0, 0, 0, 0]);
        assert_eq!(y[0], 2.0);
        assert!(y[1] == 0.0 && y[1].is_sign_negative(), "−3·0 is −0");
        assert!(y[3].is_nan());
        let mut leaky = [4.0f64, -2.0];
        rectify_with_signs(&mut leaky, &mut [0; 2], 0.25);
        assert_eq!(leaky, [4.0, -0.5]);
    }
}
