//! A [`Runtime`] on the `futures` thread pool, with a timer thread: the second
//! executor the node is tested on (the first is tokio).

// This is a runtime adapter: reading the clock and starting the timer thread are its
// job (the core itself never does either).
#![allow(clippy::disallowed_methods)]

use crate::node::Runtime;
use futures::FutureExt;
use futures::executor::ThreadPool;
use futures::future::BoxFuture;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Timers {
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    wakers: std::collections::HashMap<u64, Waker>,
    next: u64,
}

struct TimerShared {
    timers: Mutex<Timers>,
    wake: Condvar,
}

fn lock(m: &Mutex<Timers>) -> MutexGuard<'_, Timers> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs futures on a `futures::executor::ThreadPool`; sleeps are served by one timer
/// thread.
#[derive(Clone)]
pub struct ThreadPoolRuntime {
    pool: ThreadPool,
    timer: Arc<TimerShared>,
}

impl ThreadPoolRuntime {
    /// A pool of `threads` threads and a timer thread.
    pub fn new(threads: usize) -> std::io::Result<ThreadPoolRuntime> {
        let pool = ThreadPool::builder()
            .pool_size(threads.max(1))
            .name_prefix("raft-pool-")
            .create()?;
        let timer = Arc::new(TimerShared {
            timers: Mutex::new(Timers::default()),
            wake: Condvar::new(),
        });
        let shared = Arc::downgrade(&timer);
        std::thread::Builder::new()
            .name("raft-timer".into())
            .spawn(move || timer_thread(shared))?;
        Ok(ThreadPoolRuntime { pool, timer })
    }
}

fn timer_thread(shared: std::sync::Weak<TimerShared>) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut t = lock(&shared.timers);
        let now = Instant::now();
        while let Some(&Reverse((at, id))) = t.queue.peek() {
            if at > now {
                break;
            }
            t.queue.pop();
            if let Some(w) = t.wakers.remove(&id) {
                w.wake();
            }
        }
        let wait = t
            .queue
            .peek()
            .map_or(Duration::from_millis(50), |Reverse((at, _))| {
                at.saturating_duration_since(now)
            });
        let _ = shared
            .wake
            .wait_timeout(t, wait.min(Duration::from_millis(50)));
    }
}

struct Sleep {
    deadline: Instant,
    id: Option<u64>,
    timer: Arc<TimerShared>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let mut t = lock(&self.timer.timers);
        let id = match self.id {
            Some(id) => id,
            None => {
                let id = t.next;
                t.next += 1;
                t.queue.push(Reverse((deadline, id)));
                id
            }
        };
        t.wakers.insert(id, cx.waker().clone());
        drop(t);
        self.id = Some(id);
        self.timer.wake.notify_one();
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock(&self.timer.timers).wakers.remove(&id);
        }
    }
}

impl Runtime for ThreadPoolRuntime {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        self.pool.spawn_ok(future);
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Sleep {
            deadline: Instant::now() + duration,
            id: None,
            timer: self.timer.clone(),
        }
        .boxed()
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}
