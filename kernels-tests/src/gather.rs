//! Reference row gather and ring write: dst[i] = src[idx[i]]; dst[(start + i) mod N] = src[i].

/// dst (R, C) from src (N, C); indices ≥ N read row N − 1 (the kernel's clamp).
pub fn gather_rows<T: Copy>(src: &[T], n: usize, c: usize, idx: &[u32]) -> Vec<T> {
    let mut out = Vec::with_capacity(idx.len() * c);
    for &i in idx {
        let row = (i as usize).min(n - 1);
        out.extend_from_slice(&src[row * c..(row + 1) * c]);
    }
    out
}

/// In place on dst (N, C) with src (R, C), R ≤ N.
pub fn scatter_rows_ring<T: Copy>(dst: &mut [T], n: usize, c: usize, src: &[T], start: usize) {
    for (i, row) in src.chunks(c).enumerate() {
        let j = (start + i) % n;
        dst[j * c..(j + 1) * c].copy_from_slice(row);
    }
}
