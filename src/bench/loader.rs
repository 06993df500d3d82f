//! `sop bench --data DIR [--recipe R]`: how many images per second the data path turns into
//! training views (decode + the recipe's multi-crop augmentation and masks) on this machine's
//! cores, and where one image's time goes on one core: decoding, the bicubic resampling of
//! the crops, and the rest of the pipeline (flip, colour jitter, grayscale, blur, solarize,
//! normalisation, masks). No GPU is involved.
//!
//! The whole-set figure runs the loader's own work (`Dataset::get` then `Augmenter::views`,
//! as `data::loader` does) over every image on a rayon pool of `threads` threads, `reps`
//! times, and reports the median of the wall-clock rate and of the rate per CPU-second the
//! process used (on a machine shared with other work, the second is what one core of its
//! own would do). The breakdown times the parts one after the other on one thread over the
//! same images, in that thread's CPU time.

use std::time::Instant;

use rayon::prelude::*;

use crate::data::augment::{random_resized_crop_box, resize_bicubic, Augmenter};
use crate::data::{AugmentConfig, Dataset};
use crate::error::{Result, SopError};

/// What the loader benchmark measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoaderBench {
    pub images: usize,
    /// Mean source size of the images (pixels).
    pub mean_width: f64,
    pub mean_height: f64,
    pub views: String,
    pub threads: usize,
    /// Median over the repetitions, all threads together, by the wall clock.
    pub images_per_sec: f64,
    pub images_per_sec_per_thread: f64,
    /// Median over the repetitions of images per CPU-second of the process.
    pub images_per_cpu_sec: f64,
    /// One thread, per image: decoding, resampling the crops, everything else.
    pub decode_ms: f64,
    pub resize_ms: f64,
    pub rest_ms: f64,
}

impl LoaderBench {
    pub fn table(&self) -> String {
        let total = self.decode_ms + self.resize_ms + self.rest_ms;
        let pct = |x: f64| 100.0 * x / total;
        format!(
            "loader: {} images of {:.0}x{:.0} px mean into {}\n\
             {:.1} images/s on {} threads ({:.1} per thread; {:.1} per CPU-second; medians of the repetitions)\n\
             one thread, CPU time per image: decode {:.2} ms ({:.0}%), crop resampling {:.2} ms ({:.0}%), \
             flip/jitter/grayscale/blur/solarize/normalise/masks {:.2} ms ({:.0}%); {:.1} images per CPU-second",
            self.images,
            self.mean_width,
            self.mean_height,
            self.views,
            self.images_per_sec,
            self.threads,
            self.images_per_sec_per_thread,
            self.images_per_cpu_sec,
            self.decode_ms,
            pct(self.decode_ms),
            self.resize_ms,
            pct(self.resize_ms),
            self.rest_ms,
            pct(self.rest_ms),
            1e3 / total,
        )
    }
}

/// Time the training views of `augment` over every image of `data` (see the file header).
pub fn run(data: &Dataset, augment: &AugmentConfig, threads: usize, reps: usize) -> Result<LoaderBench> {
    if data.is_empty() {
        return Err(SopError::file(data.root(), "holds no images to benchmark"));
    }
    let aug = Augmenter::new(augment)?;
    let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| SopError::Invalid(format!("rayon pool: {e}")))?;
    let n = data.len();
    let (mut rates, mut cpu_rates) = (Vec::new(), Vec::new());
    for rep in 0..reps.max(1) {
        let (t, cpu) = (Instant::now(), cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID));
        let checksum: Result<f64> = pool.install(|| {
            (0..n)
                .into_par_iter()
                .map(|i| {
                    let img = data.get(i)?;
                    let v = aug.views(&img, 0, rep as u64, i as u64);
                    Ok(v.globals[0] as f64 + v.masks.len() as f64)
                })
                .sum()
        });
        std::hint::black_box(checksum?);
        rates.push(n as f64 / t.elapsed().as_secs_f64());
        cpu_rates.push(n as f64 / (cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (images_per_sec, images_per_cpu_sec) = (median(rates), median(cpu_rates));

    // One thread: decode, then resample the same crops the pipeline draws, then the whole views.
    let (mut decode, mut resize, mut views) = (0.0, 0.0, 0.0);
    let (mut w_sum, mut h_sum) = (0.0, 0.0);
    let c = augment;
    for i in 0..n {
        let t = thread_cpu();
        let img = data.get(i)?;
        decode += thread_cpu() - t;
        let (w, h) = (img.width() as usize, img.height() as usize);
        (w_sum, h_sum) = (w_sum + w as f64, h_sum + h as f64);
        let mut rng = crate::data::sample_rng(1, 0, i as u64, 0);
        let t = thread_cpu();
        let crops = [(c.global_size, c.global_scale); 2]
            .into_iter()
            .chain((0..c.local_crops).map(|_| (c.local_size, c.local_scale)));
        for (size, scale) in crops {
            let b = random_resized_crop_box(&mut rng, w, h, scale, c.ratio);
            std::hint::black_box(resize_bicubic(&img, [b.x as f64, b.y as f64, b.w as f64, b.h as f64], size, size));
        }
        resize += thread_cpu() - t;
        let t = thread_cpu();
        std::hint::black_box(aug.views(&img, 0, 0, i as u64));
        views += thread_cpu() - t;
    }
    let per = |s: f64| 1e3 * s / n as f64;
    Ok(LoaderBench {
        images: n,
        mean_width: w_sum / n as f64,
        mean_height: h_sum / n as f64,
        views: format!("2 x {} px globals + {} x {} px locals", c.global_size, c.local_crops, c.local_size),
        threads,
        images_per_sec,
        images_per_sec_per_thread: images_per_sec / threads as f64,
        images_per_cpu_sec,
        decode_ms: per(decode),
        resize_ms: per(resize),
        rest_ms: per((views - resize).max(0.0)),
    })
}

/// Seconds of CPU time on `clock` (the process's or the calling thread's).
fn cpu_seconds(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the pointer it is given.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn thread_cpu() -> f64 {
    cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID)
}
