//! How the ranks split a step (the authors' `batch_size_per_gpu`): every rank takes B images
//! per micro-batch, so a global micro-batch is ranks·B images and a step `accumulate` of
//! them. Rank r holds places [r·B, (r+1)·B) of each global micro-batch of one shared-seed
//! shuffle, so the images and their places do not depend on the number of ranks: a run on
//! n ranks of B images sees what one rank of n·B images does.

/// Rank `rank` of `ranks`, `batch` images each per micro-batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub ranks: usize,
    pub batch: usize,
}

impl Shard {
    pub fn single(batch: usize) -> Shard {
        Shard { rank: 0, ranks: 1, batch }
    }

    /// Images of one global micro-batch.
    pub fn global_batch(&self) -> usize {
        self.ranks * self.batch
    }

    /// Place in its global micro-batch's step of image `i` of this rank's micro-batch `micro`:
    /// (micro·ranks + rank)·B + i, what per-image draws are keyed by.
    pub fn image_place(&self, micro: usize, i: usize) -> u64 {
        ((micro * self.ranks + self.rank) * self.batch + i) as u64
    }

    /// This rank's part of an epoch's `order`: places [r·B, (r+1)·B) of every ranks·B.
    pub fn of_order(&self, order: &[usize]) -> Vec<usize> {
        if self.ranks <= 1 {
            return order.to_vec();
        }
        order
            .chunks(self.global_batch())
            .flat_map(|g| g.iter().skip(self.rank * self.batch).take(self.batch).copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_disjoint_and_cover_the_global_batches_in_place_order() {
        let order: Vec<usize> = (0..23).map(|i| (i * 7) % 23).collect();
        let shards: Vec<Vec<usize>> = (0..3).map(|r| Shard { rank: r, ranks: 3, batch: 2 }.of_order(&order)).collect();
        // Global micro-batch k of 6 images is rank 0's k-th pair, then rank 1's, then rank 2's.
        for k in 0..order.len() / 6 {
            let joined: Vec<usize> = (0..3).flat_map(|r| shards[r][2 * k..2 * k + 2].to_vec()).collect();
            assert_eq!(joined, order[6 * k..6 * k + 6]);
        }
        let mut all: Vec<usize> = shards.concat();
        all.sort();
        let mut want = order.clone();
        want.sort();
        assert_eq!(all, want);
        assert_eq!(Shard::single(4).of_order(&order), order);
    }

    #[test]
    fn image_places_do_not_depend_on_the_split() {
        // 2 ranks of 3 images and 1 rank of 6 give every image of micro-batch 1 the same place.
        let one = Shard::single(6);
        let two = |r| Shard { rank: r, ranks: 2, batch: 3 };
        let split: Vec<u64> = (0..2).flat_map(|r| (0..3).map(move |i| two(r).image_place(1, i))).collect();
        let whole: Vec<u64> = (0..6).map(|i| one.image_place(1, i)).collect();
        assert_eq!(split, whole);
    }
}
