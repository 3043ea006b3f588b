//! The float32 arithmetic of the XGBoost path (format doc §5.3): glibc's `expf` algorithm as the
//! reference re-implements it, the float32 sigmoid and softmax, and NumPy's pairwise float32 sum.

const N: f64 = 32.0;

/// 2^(k/32) bit patterns minus k<<47, from glibc's `e_exp2f_data.c`.
const T: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

/// `expf` as glibc computes it (and DSS's Java scorer, and dataiku-scoring's `expf` under
/// NumPy 1): `x·32/ln2 = k + r`, `2^(k/32)` from the table, a degree-3 polynomial in `r`, all in
/// double precision, rounded to f32 at the end.
pub(crate) fn expf(x: f32) -> f32 {
    let inv_ln2_n = f64::from_bits(0x3ff71547652b82fe) * N;
    let c0 = f64::from_bits(0x3fac6af84b912394) / N / N / N;
    let c1 = f64::from_bits(0x3fcebfce50fac4f3) / N / N;
    let c2 = f64::from_bits(0x3fe62e42ff0c52d6) / N;
    let x = f64::from(x);
    if x.is_nan() {
        return f32::NAN;
    }
    if x > 89.0 {
        return f32::INFINITY;
    }
    if x < -104.0 {
        return 0.0;
    }
    let z = inv_ln2_n * x;
    let kd = z.round_ties_even();
    let ki = kd as i64;
    let r = z - kd;
    let index = ki.rem_euclid(32) as usize;
    let t = T[index].wrapping_add((ki as u64) << 47);
    let s = f64::from_bits(t);
    let zz = c0 * r + c1;
    let r2 = r * r;
    let mut y = c2 * r + 1.0;
    y += zz * r2;
    (y * s) as f32
}

/// `sigmoid32(x) = f32(1 / (1 + expf(f32(-x))))`.
pub(crate) fn sigmoid32(x: f64) -> f64 {
    let e = expf((-x) as f32);
    f64::from((1.0f64 / (1.0 + f64::from(e))) as f32)
}

/// `softmax32`: max-subtracted, `expf`, the norm summed and the division done in f32.
pub(crate) fn softmax32(x: &[f32], out: &mut [f64]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut norm = 0.0f32;
    let mut e = [0.0f32; 64];
    let mut big = Vec::new();
    let buf: &mut [f32] = if x.len() <= 64 {
        &mut e[..x.len()]
    } else {
        big.resize(x.len(), 0.0);
        &mut big
    };
    for (b, &t) in buf.iter_mut().zip(x) {
        *b = expf(t - max);
        norm += *b;
    }
    for (o, &b) in out.iter_mut().zip(buf.iter()) {
        *o = f64::from(b / norm);
    }
}

/// NumPy's pairwise summation of a float32 array (`np.sum(a, dtype=float32)`).
pub(crate) fn pairwise_sum_f32(a: &[f32]) -> f32 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0f32;
        for &v in a {
            res += v;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f32; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum_f32(&a[..n2]) + pairwise_sum_f32(&a[n2..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc's algorithm is within 0.51 ulp of the exact exponential (dataiku-scoring under
    /// NumPy 2 runs it in float32 arithmetic and is off by up to 16 ulps; docs/scoring.md).
    #[test]
    fn expf_is_within_half_an_ulp() {
        let mut x = -20.0f32;
        while x < 20.0 {
            let e = expf(x);
            let want = f64::from(x).exp();
            let ulp = f64::from(f32::from_bits(e.to_bits() + 1) - e);
            assert!(
                (f64::from(e) - want).abs() <= 0.51 * ulp,
                "{x}: {e} vs {want}"
            );
            x += 0.001_37;
        }
        assert_eq!(expf(0.0), 1.0);
    }

    #[test]
    fn pairwise_matches_sequential_for_small() {
        let a: Vec<f32> = (0..300).map(|i| (i as f32) * 0.1).collect();
        let s = pairwise_sum_f32(&a);
        assert!((s - 4485.0).abs() < 0.01);
    }
}
