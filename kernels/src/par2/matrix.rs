//! Gauss-Jordan inversion of a square matrix over GF(2^16).

use crate::gf16::{inv, mul};

/// The inverse of the square matrix `m` (rows), or `None` when it is singular.
pub fn invert(mut m: Vec<Vec<u16>>) -> Option<Vec<Vec<u16>>> {
    let n = m.len();
    if m.iter().any(|row| row.len() != n) {
        return None;
    }
    let mut r: Vec<Vec<u16>> = (0..n).map(|i| (0..n).map(|j| u16::from(i == j)).collect()).collect();
    for col in 0..n {
        let pivot = (col..n).find(|&row| m[row][col] != 0)?;
        m.swap(col, pivot);
        r.swap(col, pivot);
        let scale = inv(m[col][col])?;
        for j in 0..n {
            m[col][j] = mul(m[col][j], scale);
            r[col][j] = mul(r[col][j], scale);
        }
        for row in 0..n {
            let f = m[row][col];
            if row == col || f == 0 {
                continue;
            }
            for j in 0..n {
                m[row][j] ^= mul(f, m[col][j]);
                r[row][j] ^= mul(f, r[col][j]);
            }
        }
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gf16::pow;

    fn product(a: &[Vec<u16>], b: &[Vec<u16>]) -> Vec<Vec<u16>> {
        let n = a.len();
        (0..n).map(|i| (0..n).map(|j| (0..n).fold(0, |acc, k| acc ^ mul(a[i][k], b[k][j]))).collect()).collect()
    }

    #[test]
    fn vandermonde_inverts_and_singular_does_not() {
        let bases = [2u16, 4, 16, 128, 256, 2048];
        let m: Vec<Vec<u16>> = (0..6).map(|e| bases.iter().map(|&b| pow(b, e)).collect()).collect();
        let mi = invert(m.clone()).expect("Vandermonde with distinct bases is invertible");
        let id = product(&m, &mi);
        for (i, row) in id.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                assert_eq!(v, u16::from(i == j));
            }
        }
        assert!(invert(vec![vec![1, 2], vec![1, 2]]).is_none());
        assert!(invert(vec![vec![1, 2]]).is_none());
        assert_eq!(invert(vec![]), Some(vec![]));
    }
}
