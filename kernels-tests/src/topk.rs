//! Reference row-wise top-k: for each row of x (R, C), the k largest values and their
//! column indices, descending, equal values listed by increasing column.

pub fn topk_forward(x: &[f64], r: usize, c: usize, k: usize) -> (Vec<f64>, Vec<u32>) {
    let mut values = Vec::with_capacity(r * k);
    let mut indices = Vec::with_capacity(r * k);
    for i in 0..r {
        let row = &x[i * c..(i + 1) * c];
        let mut order: Vec<usize> = (0..c).collect();
        // Stable sort by descending value keeps equal values in column order.
        order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).expect("reference top-k needs rows without NaN"));
        for &j in &order[..k] {
            values.push(row[j]);
            indices.push(j as u32);
        }
    }
    (values, indices)
}
