//! A dedicated thread that owns a value and runs closures on it, one at a time, in
//! order. LMDB transactions live and die inside those closures, so none is ever held
//! across an `.await`, and write transactions never leave their thread.

use futures::channel::oneshot;
use std::sync::mpsc;
use std::thread;

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// Runs closures on a value owned by a dedicated thread.
pub(crate) struct Worker<S> {
    jobs: mpsc::Sender<Job<S>>,
}

impl<S> Clone for Worker<S> {
    fn clone(&self) -> Self {
        Worker {
            jobs: self.jobs.clone(),
        }
    }
}

/// The worker thread has stopped (it panicked, or its value could not be built).
#[derive(Debug, thiserror::Error)]
#[error("the storage thread {0} has stopped")]
pub struct WorkerGone(pub &'static str);

impl<S: Send + 'static> Worker<S> {
    /// Starts a thread named `name` that owns `state`.
    pub(crate) fn start(name: &'static str, mut state: S) -> std::io::Result<Worker<S>> {
        let (jobs, rx) = mpsc::channel::<Job<S>>();
        // A storage thread is this crate's whole point: it keeps transactions off the
        // async runtime.
        #[allow(clippy::disallowed_methods)]
        thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut state);
                }
            })?;
        Ok(Worker { jobs })
    }

    /// Queues `f` to run on the thread, without waiting for it; false if the thread
    /// has stopped.
    pub(crate) fn post(&self, f: impl FnOnce(&mut S) + Send + 'static) -> bool {
        self.jobs.send(Box::new(f)).is_ok()
    }

    /// Runs `f` on the thread and returns its result.
    pub(crate) async fn call<R: Send + 'static>(
        &self,
        name: &'static str,
        f: impl FnOnce(&mut S) -> R + Send + 'static,
    ) -> Result<R, WorkerGone> {
        let (tx, rx) = oneshot::channel();
        let job: Job<S> = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        self.jobs.send(job).map_err(|_| WorkerGone(name))?;
        rx.await.map_err(|_| WorkerGone(name))
    }
}
