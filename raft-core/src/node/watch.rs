//! A minimal watch channel (latest value + change notification), runtime-agnostic.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

struct Shared<T> {
    value: T,
    version: u64,
    closed: bool,
    wakers: Vec<Waker>,
}

/// Publishes values to any number of [`Watch`]es.
pub(crate) struct Publisher<T> {
    shared: Arc<Mutex<Shared<T>>>,
}

/// Observes the latest value published, and waits for changes.
pub struct Watch<T> {
    shared: Arc<Mutex<Shared<T>>>,
    seen: u64,
}

impl<T> Clone for Watch<T> {
    fn clone(&self) -> Self {
        Watch {
            shared: self.shared.clone(),
            seen: self.seen,
        }
    }
}

fn lock<T>(m: &Mutex<Shared<T>>) -> MutexGuard<'_, Shared<T>> {
    // A panic while holding this lock cannot leave the value half-written (it is
    // replaced whole), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn channel<T>(initial: T) -> (Publisher<T>, Watch<T>) {
    let shared = Arc::new(Mutex::new(Shared {
        value: initial,
        version: 0,
        closed: false,
        wakers: Vec::new(),
    }));
    (
        Publisher {
            shared: shared.clone(),
        },
        Watch { shared, seen: 0 },
    )
}

impl<T: PartialEq> Publisher<T> {
    /// Publishes `value` if it differs from the current one.
    pub(crate) fn publish(&self, value: T) {
        let mut s = lock(&self.shared);
        if s.value == value {
            return;
        }
        s.value = value;
        s.version += 1;
        for w in s.wakers.drain(..) {
            w.wake();
        }
    }
}

impl<T> Drop for Publisher<T> {
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        s.closed = true;
        for w in s.wakers.drain(..) {
            w.wake();
        }
    }
}

impl<T: Clone> Watch<T> {
    /// The latest value.
    pub fn get(&self) -> T {
        lock(&self.shared).value.clone()
    }

    /// Reads a part of the latest value without cloning the whole of it.
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&lock(&self.shared).value)
    }

    /// Waits until a value newer than the last one this watch returned is published,
    /// and returns it; `None` once the publisher is gone (the node stopped).
    pub async fn changed(&mut self) -> Option<T> {
        futures::future::poll_fn(|cx| self.poll_changed(cx)).await
    }

    fn poll_changed(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = lock(&self.shared);
        if s.version != self.seen {
            self.seen = s.version;
            return Poll::Ready(Some(s.value.clone()));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        if !s.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            s.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Waits until `pred` holds for the latest value, and returns it; `None` if the
    /// publisher goes away first.
    pub async fn wait_for(&mut self, mut pred: impl FnMut(&T) -> bool) -> Option<T> {
        let now = self.get();
        if pred(&now) {
            return Some(now);
        }
        loop {
            let v = self.changed().await?;
            if pred(&v) {
                return Some(v);
            }
        }
    }
}
