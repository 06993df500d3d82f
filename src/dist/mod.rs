//! Data-parallel training over MPI: the ranks of a run and what they exchange.
//!
//! `world()` is this process's place in the run. Built with `--features mpi` and started by
//! `mpirun`/`srun` (an MPI launcher's environment), it is one rank of N, and every MPI call
//! runs on one dedicated thread (`comm`); otherwise (the default build, or a plain start of a
//! `--features mpi` binary) it is rank 0 of 1 and every exchange is the identity.
//!
//! The exchanges are on host bytes (`Vec<u8>`/`Vec<f32>`); `device` moves tensors through
//! them. The gradient sum is deterministic whatever the MPI library's algorithms: each rank
//! owns a chunk, receives every rank's part of it (all-to-all), adds them in rank order and
//! sends the sum to all (all-gather), so every rank gets the same bits (`comm::sum_chunks`).

pub mod device;
pub mod layout;

#[cfg(feature = "mpi")]
mod comm;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crate::error::{Result, SopError};

/// This process's place among the ranks of a run.
pub struct Dist {
    rank: usize,
    size: usize,
    local_rank: usize,
    #[cfg(feature = "mpi")]
    comm: Option<comm::Comm>,
    /// Microseconds spent in exchanges so far (the host waiting on MPI).
    comm_micros: AtomicU64,
}

static WORLD: OnceLock<Dist> = OnceLock::new();

/// Whether an MPI launcher (Open MPI's mpirun, MPICH/Hydra, PMIx, Slurm's srun) started
/// this process.
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"].iter().any(|v| std::env::var_os(v).is_some())
        || std::env::var_os("SLURM_PROCID").is_some() && std::env::var_os("SLURM_STEP_NUM_TASKS").is_some()
}

/// `line` and a newline on stderr in one write: `eprintln!` writes its pieces one by one,
/// and mpirun's merged stderr then interleaves other ranks' output inside them.
pub fn eprint_line(line: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
}

/// This process's `Dist`, made on first use (MPI is initialised then, on its thread).
pub fn world() -> &'static Dist {
    WORLD.get_or_init(Dist::from_env)
}

/// This process's `Dist` if `world` was called (None: no run started MPI).
pub fn world_if_started() -> Option<&'static Dist> {
    WORLD.get()
}

/// The adapter `--adapter` names, else (with several ranks on this host and no
/// `SOP_ADAPTER`) local rank i's: adapter i modulo the adapters of the best one's kind
/// (`sop info`'s order), so N ranks on a host of N GPUs take one each.
pub fn adapter_for_rank(wanted: Option<&str>) -> Option<String> {
    if wanted.is_some() || std::env::var_os("SOP_ADAPTER").is_some() || !world().is_distributed() {
        return wanted.map(str::to_string);
    }
    let adapters = crate::gpu::list_adapters();
    let best = adapters.first()?;
    let same: Vec<usize> = adapters.iter().filter(|a| a.device_type == best.device_type).map(|a| a.index).collect();
    Some(same[world().local_rank() % same.len()].to_string())
}

impl Dist {
    /// Rank 0 of 1: no MPI.
    pub fn single() -> Dist {
        Dist {
            rank: 0,
            size: 1,
            local_rank: 0,
            #[cfg(feature = "mpi")]
            comm: None,
            comm_micros: AtomicU64::new(0),
        }
    }

    #[cfg(not(feature = "mpi"))]
    fn from_env() -> Dist {
        if launched_by_mpi() {
            log::warn!("started by an MPI launcher, but this sop was built without `--features mpi`: one rank alone");
        }
        Dist::single()
    }

    #[cfg(feature = "mpi")]
    fn from_env() -> Dist {
        if !launched_by_mpi() {
            return Dist::single();
        }
        let c = comm::Comm::start();
        let (rank, size, local_rank) = (c.rank, c.size, c.local_rank);
        Dist { rank, size, local_rank, comm: Some(c), comm_micros: AtomicU64::new(0) }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn size(&self) -> usize {
        self.size
    }
    /// Rank among the ranks of this host (it picks the adapter).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }
    /// Rank 0 writes the run's files and runs the k-NN.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }
    pub fn is_distributed(&self) -> bool {
        self.size > 1
    }

    /// Seconds spent waiting on exchanges since the start.
    pub fn comm_seconds(&self) -> f64 {
        self.comm_micros.load(Ordering::Relaxed) as f64 * 1e-6
    }

    /// Runs `f`, its time counted as communication.
    pub fn timed<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f();
        self.comm_micros.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        r
    }

    /// Starts the element-wise mean over ranks of `data` (the same length on every rank),
    /// summed in rank order; `wait` on the returned handle gives it. Exchanges start in call
    /// order on the MPI thread, so the host can read the next bucket meanwhile.
    pub fn start_mean(&self, data: Vec<f32>) -> Pending<Vec<f32>> {
        self.start_mean_of(data.len(), move || Ok(data))
    }

    /// `start_mean` of `len` values that the MPI thread first gets from `produce` (a
    /// gradient bucket's read-back, waited for there, not by the training thread). Should
    /// `produce` fail, this rank still takes part (with zeros, so no rank hangs) and the
    /// error is the answer.
    pub fn start_mean_of(
        &self,
        len: usize,
        produce: impl FnOnce() -> Result<Vec<f32>> + Send + 'static,
    ) -> Pending<Vec<f32>> {
        #[cfg(feature = "mpi")]
        if let Some(c) = &self.comm {
            let size = self.size;
            return Pending {
                inner: PendingInner::Comm(c.call(move |w| {
                    let (data, failed) = match produce() {
                        Ok(d) if d.len() == len => (d, None),
                        Ok(d) => (vec![0.0; len], Some(SopError::Invalid(format!("{} values for {len}", d.len())))),
                        Err(e) => (vec![0.0; len], Some(e)),
                    };
                    let mean = comm::sum_chunks(w, &data, size);
                    failed.map_or(Ok(mean), Err)
                })),
            };
        }
        let _ = len;
        Pending { inner: PendingInner::Ready(produce()) }
    }

    /// Waits for an exchange `start_mean` began; the time counts as communication.
    pub fn wait<T>(&self, p: Pending<T>) -> Result<T> {
        self.timed(|| p.wait())
    }

    /// Every rank's `data`, in rank order (lengths may differ).
    pub fn all_gather(&self, data: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        #[cfg(feature = "mpi")]
        if let Some(c) = &self.comm {
            return self.timed(|| c.call(move |w| comm::all_gather(w, &data)).wait());
        }
        Ok(vec![data])
    }

    /// Rank 0's `data` on every rank.
    pub fn broadcast(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        #[cfg(feature = "mpi")]
        if let Some(c) = &self.comm {
            return self.timed(|| c.call(move |w| comm::broadcast(w, data)).wait());
        }
        Ok(data)
    }

    /// Every rank's `values`, in rank order.
    pub fn all_gather_u64(&self, values: &[u64]) -> Result<Vec<Vec<u64>>> {
        let parts = self.all_gather(bytemuck::cast_slice(values).to_vec())?;
        Ok(parts.iter().map(|p| bytemuck::pod_collect_to_vec(p)).collect())
    }

    /// Stops every rank of the run (MPI_Abort) after `message`; returns only for one rank alone.
    pub fn abort(&self, message: &str) {
        #[cfg(feature = "mpi")]
        if let Some(c) = &self.comm {
            eprint_line(&format!("error on rank {} of {}: {message}; stopping every rank", self.rank, self.size));
            c.abort(1);
        }
        let _ = message;
    }

    /// The end of a process that succeeded: MPI finalised (every rank must reach it).
    pub fn finish(&self) {
        #[cfg(feature = "mpi")]
        if let Some(c) = &self.comm {
            c.finish();
        }
    }

    /// Refuses values that differ between ranks, naming `what` and every rank's value.
    pub fn check_same(&self, what: &str, values: &[u64]) -> Result<()> {
        let all = self.all_gather_u64(values)?;
        if all.iter().any(|v| v != &all[0]) {
            let each: Vec<String> = all.iter().enumerate().map(|(r, v)| format!("rank {r}: {v:?}")).collect();
            return Err(SopError::Invalid(format!("the ranks differ in {what}: {}", each.join(", "))));
        }
        Ok(())
    }
}

/// An exchange under way on the MPI thread.
pub struct Pending<T> {
    inner: PendingInner<T>,
}

enum PendingInner<T> {
    Ready(Result<T>),
    #[cfg(feature = "mpi")]
    Comm(comm::Call<Result<T>>),
}

impl<T> Pending<T> {
    fn wait(self) -> Result<T> {
        match self.inner {
            PendingInner::Ready(r) => r,
            #[cfg(feature = "mpi")]
            PendingInner::Comm(c) => c.wait()?,
        }
    }
}
