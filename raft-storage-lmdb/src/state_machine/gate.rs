//! The resize gate: applies and snapshot captures pass it together; growing the
//! map waits until none is inside (LMDB may resize only with no transaction open).

use super::*;

/// Lets readers in and out, and lets a map resize wait until none is inside (LMDB
/// forbids resizing with a transaction open in the process).
#[derive(Default)]
pub(super) struct Gate {
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

pub(super) struct Pass(Arc<Gate>);

impl Gate {
    fn lock(&self) -> MutexGuard<'_, (usize, bool)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn enter(self: &Arc<Self>) -> Pass {
        let mut s = self.lock();
        while s.1 {
            s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.0 += 1;
        Pass(self.clone())
    }

    pub(super) fn exclusive<R>(&self, f: impl FnOnce() -> R) -> R {
        let mut s = self.lock();
        s.1 = true;
        while s.0 > 0 {
            s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        let r = f();
        s.1 = false;
        self.changed.notify_all();
        r
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.0 -= 1;
        self.0.changed.notify_all();
    }
}
