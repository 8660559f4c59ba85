//! Runtime adapters that live behind features, outside the core's normal dependencies.

/// A [`Runtime`](crate::node::Runtime) on tokio (feature `tokio`).
#[cfg(feature = "tokio")]
pub mod tokio {
    // Reading the clock is this adapter's job (the core itself never does).
    #![allow(clippy::disallowed_methods)]

    use crate::node::Runtime;
    use futures::FutureExt;
    use futures::future::BoxFuture;
    use std::time::{Duration, Instant};

    /// Spawns on a tokio runtime and sleeps with tokio's timer.
    #[derive(Clone, Debug)]
    pub struct TokioRuntime {
        handle: ::tokio::runtime::Handle,
    }

    impl TokioRuntime {
        /// Runs on the runtime of `handle`.
        pub fn new(handle: ::tokio::runtime::Handle) -> TokioRuntime {
            TokioRuntime { handle }
        }

        /// Runs on the current tokio runtime; `None` outside one.
        pub fn current() -> Option<TokioRuntime> {
            ::tokio::runtime::Handle::try_current()
                .ok()
                .map(TokioRuntime::new)
        }
    }

    impl Runtime for TokioRuntime {
        fn spawn(&self, future: BoxFuture<'static, ()>) {
            self.handle.spawn(future);
        }

        fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
            ::tokio::time::sleep(duration).boxed()
        }

        fn now(&self) -> Instant {
            Instant::now()
        }
    }
}
