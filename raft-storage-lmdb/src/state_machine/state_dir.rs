//! The live state directory: opening a `state-NNNNNN` environment, reading its
//! applied id, and switching `CURRENT` to another one with an atomic rename.

use super::*;

/// The live environment.
pub(super) struct Current {
    pub(super) env: Env<WithoutTls>,
    pub(super) data: Db,
    pub(super) sessions: Db,
    pub(super) meta: MetaDb,
    pub(super) name: String,
}

pub(super) fn open_current(
    dir: &Path,
    name: &str,
    config: &SmConfig,
) -> Result<Current, LmdbError> {
    let sync = match config.apply_durability {
        ApplyDurability::Synced => common::EnvSync::Full,
        ApplyDurability::MetaDeferred => common::EnvSync::NoMetaSync,
        ApplyDurability::Deferred => common::EnvSync::NoSync,
    };
    let env = common::open_env(&dir.join(name), &config.env, 4, sync)?;
    let wtxn = env.write_txn()?;
    let (data, sessions, meta): (Db, Db, MetaDb) = env
        .create_databases_and_commit(wtxn, |o, wtxn| -> Result<_, heed::Error> {
            let data = o.create_database::<RawBytes, RawBytes>(wtxn, Some("data"))?;
            let sessions = o.create_database::<RawBytes, RawBytes>(wtxn, Some("sessions"))?;
            let meta = o.create_database::<Str, RawBytes>(wtxn, Some("meta"))?;
            Ok(CommitOrAbort::<_, ()>::Commit((data, sessions, meta)))
        })?
        .unwrap_commit();
    check_format(&env, meta, &dir.join(name))?;
    Ok(Current {
        env,
        data,
        sessions,
        meta,
        name: name.to_string(),
    })
}

pub(super) fn read_applied(cur: &Current, txn: &RoTxn<'_, WithoutTls>) -> Result<LogId, LmdbError> {
    match cur.meta.get(txn, "applied")? {
        None => Ok(LogId::ZERO),
        Some(raw) => {
            let frame = common::unseal(raw, &|| "state machine applied id".to_string())?;
            decode_frame(frame)
                .map_err(|e| LmdbError::corrupt("state machine applied id", e.to_string()))
        }
    }
}

/// Points `CURRENT` at the state directory `name`, atomically and durably.
pub(super) fn write_current(dir: &Path, name: &str) -> Result<(), LmdbError> {
    durable::write_atomically(&dir.join("CURRENT"), name.as_bytes())
}

/// Makes `next`, built in the state directory `name`, the live state: one atomic
/// rename of `CURRENT`, then the old directory goes.
pub(super) fn switch_to(shared: &Shared, next: Current, name: &str) -> Result<(), LmdbError> {
    let old = shared.current();
    write_current(&shared.dir, name)?;
    *shared
        .current
        .write()
        .unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
    let _ = fs::remove_dir_all(shared.dir.join(&old.name));
    Ok(())
}
