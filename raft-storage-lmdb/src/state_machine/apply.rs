//! Applying a batch of committed entries in one write transaction.

use super::*;

pub(super) fn apply_batch<M: Machine>(
    shared: &Shared,
    machine: &M,
    entries: &[Entry],
) -> Result<Vec<Bytes>, LmdbError> {
    let cur = shared.current();
    let started = Instant::now();
    let mut backoff = Duration::from_millis(10);
    loop {
        let attempt = (|| {
            let mut txn = cur.env.write_txn()?;
            let applied = {
                let frame = cur
                    .meta
                    .get(&txn, "applied")?
                    .map(|raw| common::unseal(raw, &|| "applied id".into()).map(<[u8]>::to_vec));
                match frame {
                    Some(f) => decode_frame::<LogId>(&f?)
                        .map_err(|e| LmdbError::corrupt("applied id", e.to_string()))?,
                    None => LogId::ZERO,
                }
            };
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                if e.log_id.index <= applied.index {
                    return Err(LmdbError::Invalid(format!(
                        "entry {:?} is at or before the applied entry {applied:?}",
                        e.log_id
                    )));
                }
                out.push(match &e.payload {
                    EntryPayload::Command(c) => {
                        let mut cx = ApplyContext {
                            txn: &mut txn,
                            data: cur.data,
                            sessions: cur.sessions,
                            log_id: e.log_id,
                        };
                        machine.apply(&mut cx, c)?
                    }
                    EntryPayload::Blank | EntryPayload::Membership(_) => Bytes::new(),
                });
            }
            if let Some(last) = entries.last() {
                cur.meta.put(&mut txn, "applied", &sealed(&last.log_id)?)?;
            }
            txn.commit()?;
            Ok(out)
        })();
        match attempt {
            Ok(out) => return Ok(out),
            Err(LmdbError::Heed(e)) if common::is_map_full(&e) => {
                if !shared
                    .gate
                    .exclusive(|| common::grow(&cur.env, &shared.config.env))?
                {
                    return Err(LmdbError::MapFull {
                        path: cur.env.path().to_path_buf(),
                        max: shared.config.env.max_map_size,
                    });
                }
            }
            Err(e)
                if e.is_disk_full(&shared.dir)
                    && started.elapsed() < shared.config.env.disk_full_patience =>
            {
                tracing::error!(error = %e, "disk full: waiting for space before applying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}
