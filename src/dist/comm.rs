//! The MPI thread (feature `mpi`): MPI is initialised on it, every exchange runs there in
//! the order it was asked for, and MPI is finalised when the run's `Dist` goes away. The
//! training thread hands it closures and waits on their answers only when it needs them.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;

use mpi::datatype::{Partition, PartitionMut};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

use crate::error::{Result, SopError};

type Job = Box<dyn FnOnce(&SimpleCommunicator) + Send>;

pub(super) struct Comm {
    pub(super) rank: usize,
    pub(super) size: usize,
    pub(super) local_rank: usize,
    /// None once `finish` has run.
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The answer of one exchange, once the MPI thread has run it.
pub(super) struct Call<T>(Receiver<T>);

impl<T> Call<T> {
    pub(super) fn wait(self) -> Result<T> {
        self.0.recv().map_err(|_| SopError::Invalid("the MPI thread stopped before answering".into()))
    }
}

impl Comm {
    /// Initialises MPI on a new thread (MPI_THREAD_MULTIPLE where offered, so that
    /// `abort` may come from the training thread) and learns this rank's place.
    pub(super) fn start() -> Comm {
        let (jobs, rx) = channel::<Job>();
        let (place_tx, place_rx) = channel();
        let thread = std::thread::Builder::new()
            .name("sop-mpi".into())
            .spawn(move || {
                let Some((universe, threading)) = mpi::initialize_with_threading(mpi::Threading::Multiple) else {
                    eprintln!("error: MPI could not be initialised");
                    std::process::exit(1);
                };
                let world = universe.world();
                // Rank among this host's ranks (the communicator is freed before MPI_Finalize).
                let local_rank = world.split_shared(0).rank() as usize;
                if threading != mpi::Threading::Multiple {
                    log::warn!("MPI offers {threading:?} threading; an abort from the training thread may not be safe");
                }
                let _ = place_tx.send((world.rank() as usize, world.size() as usize, local_rank));
                for job in rx {
                    job(&world);
                }
                drop(universe); // MPI_Finalize
            })
            .expect("spawning the MPI thread");
        let (rank, size, local_rank) = place_rx.recv().expect("the MPI thread reports its rank");
        Comm { rank, size, local_rank, jobs: Mutex::new(Some(jobs)), thread: Mutex::new(Some(thread)) }
    }

    /// Runs `f` on the MPI thread after every exchange asked for before it.
    pub(super) fn call<T: Send + 'static>(&self, f: impl FnOnce(&SimpleCommunicator) -> T + Send + 'static) -> Call<T> {
        let (tx, rx) = channel();
        let job: Job = Box::new(move |w| {
            let _ = tx.send(f(w));
        });
        if let Some(jobs) = self.jobs.lock().expect("MPI jobs lock").as_ref() {
            let _ = jobs.send(job);
        }
        Call(rx)
    }

    /// MPI_Abort on the whole run: mpirun/srun stop every rank.
    pub(super) fn abort(&self, code: i32) -> ! {
        // SAFETY: MPI is initialised (with MPI_THREAD_MULTIPLE where offered) and not yet
        // finalised: the MPI thread only finalises after `Comm` is dropped.
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
        }
        std::process::exit(code)
    }
}

impl Comm {
    /// Runs the exchanges already asked for, then MPI_Finalize (every rank must, or mpirun
    /// reports the run as failed); later calls answer nothing.
    pub(super) fn finish(&self) {
        self.jobs.lock().expect("MPI jobs lock").take();
        if let Some(t) = self.thread.lock().expect("MPI thread lock").take() {
            let _ = t.join();
        }
    }
}

/// [start, end) of chunk `r` of `n` elements split into `size` nearly equal chunks.
fn chunk(n: usize, size: usize, r: usize) -> (usize, usize) {
    (n * r / size, n * (r + 1) / size)
}

/// The element-wise mean over ranks of `data`: rank r owns chunk r, receives every rank's
/// part of it (all-to-all), adds the parts in rank order (so the bits do not depend on the
/// MPI library's reduction order) and scales by 1/size, then every rank gathers every chunk.
pub(super) fn sum_chunks(world: &SimpleCommunicator, data: &[f32], size: usize) -> Vec<f32> {
    let n = data.len();
    let me = world.rank() as usize;
    let counts: Vec<Count> = (0..size).map(|r| (chunk(n, size, r).1 - chunk(n, size, r).0) as Count).collect();
    let displs: Vec<Count> = (0..size).map(|r| chunk(n, size, r).0 as Count).collect();
    let (lo, hi) = chunk(n, size, me);
    let mine = hi - lo;
    let mut parts = vec![0f32; mine * size];
    {
        let send = Partition::new(data, &counts[..], &displs[..]);
        let recv_counts = vec![mine as Count; size];
        let recv_displs: Vec<Count> = (0..size).map(|r| (r * mine) as Count).collect();
        let mut recv = PartitionMut::new(&mut parts[..], &recv_counts[..], &recv_displs[..]);
        world.all_to_all_varcount_into(&send, &mut recv);
    }
    let mut sum = parts[..mine].to_vec();
    for r in 1..size {
        for (s, p) in sum.iter_mut().zip(&parts[r * mine..(r + 1) * mine]) {
            *s += p;
        }
    }
    let inv = 1.0 / size as f32;
    sum.iter_mut().for_each(|s| *s *= inv);
    let mut out = vec![0f32; n];
    {
        let mut recv = PartitionMut::new(&mut out[..], &counts[..], &displs[..]);
        world.all_gather_varcount_into(&sum[..], &mut recv);
    }
    out
}

/// Every rank's bytes, in rank order.
pub(super) fn all_gather(world: &SimpleCommunicator, data: &[u8]) -> Vec<Vec<u8>> {
    let size = world.size() as usize;
    let mut lens = vec![0 as Count; size];
    world.all_gather_into(&(data.len() as Count), &mut lens[..]);
    let displs: Vec<Count> = lens.iter().scan(0, |at, &l| Some(std::mem::replace(at, *at + l))).collect();
    let total: usize = lens.iter().map(|&l| l as usize).sum();
    let mut all = vec![0u8; total];
    {
        let mut recv = PartitionMut::new(&mut all[..], &lens[..], &displs[..]);
        world.all_gather_varcount_into(data, &mut recv);
    }
    (0..size).map(|r| all[displs[r] as usize..(displs[r] + lens[r]) as usize].to_vec()).collect()
}

/// Rank 0's bytes on every rank.
pub(super) fn broadcast(world: &SimpleCommunicator, mut data: Vec<u8>) -> Vec<u8> {
    let root = world.process_at_rank(0);
    let mut len = data.len() as u64;
    root.broadcast_into(&mut len);
    data.resize(len as usize, 0);
    if len > 0 {
        root.broadcast_into(&mut data[..]);
    }
    data
}
