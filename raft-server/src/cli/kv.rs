//! `raft-server kv`: read and write keys, with values from arguments, standard input
//! or files, answers as text or JSON.

use super::conn::{ConnArgs, Output, client_from, emit};
use super::error::CliError;
use clap::{Args, Subcommand};
use raft_proto::Bytes;
use raft_server::proto::{Consistency, WriteResult};
use serde_json::{Map, Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub(crate) enum KvOp {
    /// Print a key's value.
    Get {
        key: String,
        /// Serve from whichever node answers, possibly stale.
        #[arg(long)]
        stale: bool,
    },
    /// Set a key.
    Put {
        key: String,
        #[command(flatten)]
        value: ValueArgs,
    },
    /// Remove a key.
    Delete { key: String },
    /// Compare and swap: set KEY to --new (or remove it with --remove) if its value is
    /// --expected (or it is absent, with --absent). Exits with 4 if it is not.
    Cas {
        key: String,
        /// The value KEY must have.
        #[arg(long, conflicts_with_all = ["absent", "expected_file"], required_unless_present_any = ["absent", "expected_file"])]
        expected: Option<String>,
        /// Read the expected value from this file (`-`: standard input), byte for byte.
        #[arg(long, value_name = "PATH", conflicts_with = "absent")]
        expected_file: Option<PathBuf>,
        /// Swap only if KEY is not set.
        #[arg(long)]
        absent: bool,
        /// The new value.
        #[arg(long, conflicts_with_all = ["remove", "value_file"], required_unless_present_any = ["remove", "value_file"])]
        new: Option<String>,
        /// Read the new value from this file (`-`: standard input), byte for byte.
        #[arg(long, value_name = "PATH", conflicts_with = "remove")]
        value_file: Option<PathBuf>,
        /// Remove KEY instead of setting it.
        #[arg(long)]
        remove: bool,
    },
    /// Append to a key's value.
    Append {
        key: String,
        #[command(flatten)]
        value: ValueArgs,
    },
    /// List keys with a prefix (or from --start to --end).
    Scan {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        start: Option<String>,
        #[arg(long)]
        end: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        stale: bool,
    },
}

/// A value to write: an argument, standard input or a file.
#[derive(Args)]
pub(crate) struct ValueArgs {
    /// The value (`-`: read it from standard input, byte for byte).
    #[arg(required_unless_present = "value_file", conflicts_with = "value_file")]
    value: Option<String>,
    /// Read the value from this file (`-`: standard input), byte for byte.
    #[arg(long, value_name = "PATH")]
    value_file: Option<PathBuf>,
}

fn show(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(Bytes::from(end));
        }
    }
    None
}

/// Longest value `kv` reads from standard input or a file (the server refuses values
/// over its own `max_value_bytes`, 1 MiB by default, anyway).
pub(crate) const MAX_VALUE_INPUT: u64 = 64 << 20;

/// The bytes of the file at `path` (`-`: standard input), at most [`MAX_VALUE_INPUT`].
fn read_value(path: &Path) -> Result<Bytes, CliError> {
    let stdin = path == Path::new("-");
    let name = if stdin {
        "standard input".to_string()
    } else {
        path.display().to_string()
    };
    let mut buf = Vec::new();
    let read = if stdin {
        std::io::stdin()
            .lock()
            .take(MAX_VALUE_INPUT + 1)
            .read_to_end(&mut buf)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_VALUE_INPUT + 1).read_to_end(&mut buf))
    };
    read.map_err(CliError::io(&name))?;
    if buf.len() as u64 > MAX_VALUE_INPUT {
        return Err(CliError::ValueTooLong { name });
    }
    Ok(Bytes::from(buf))
}

impl ValueArgs {
    /// The value: the argument, or the bytes of standard input (`-`) or of `--value-file`.
    fn read(self) -> Result<Bytes, CliError> {
        match (self.value, self.value_file) {
            (Some(v), None) if v == "-" => read_value(Path::new("-")),
            (Some(v), None) => Ok(Bytes::from(v)),
            (None, Some(path)) => read_value(&path),
            _ => Err(CliError::Usage(
                "give VALUE, `-` (standard input) or --value-file PATH".into(),
            )),
        }
    }
}

/// Sets `doc[field]` to `value`: a JSON string when it is UTF-8, `null` when absent,
/// else its base64 (standard alphabet, padded) with `doc[field_encoding] = "base64"`.
fn put_bytes(doc: &mut Map<String, Value>, field: &str, value: Option<&Bytes>) {
    let Some(value) = value else {
        doc.insert(field.into(), Value::Null);
        return;
    };
    match std::str::from_utf8(value) {
        Ok(text) => {
            doc.insert(field.into(), text.into());
        }
        Err(_) => {
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(value);
            doc.insert(field.into(), encoded.into());
            doc.insert(format!("{field}_encoding"), "base64".into());
        }
    }
}

/// The JSON answer to a write: its key and the index it committed at.
fn write_doc(key: &str, index: u64) -> Map<String, Value> {
    let mut doc = Map::new();
    doc.insert("key".into(), key.into());
    doc.insert("index".into(), index.into());
    doc
}

/// Prints one JSON document on one line.
/// Prints a put's or a delete's outcome: the index and, in JSON, the value before.
fn print_replaced(json: bool, key: &str, w: &raft_server::proto::Written) {
    if json {
        let mut doc = write_doc(key, w.index);
        if let WriteResult::Previous(previous) = &w.result {
            put_bytes(&mut doc, "previous", previous.as_ref());
        }
        emit(doc);
    } else {
        println!("OK (committed at index {})", w.index);
    }
}

pub(crate) async fn kv(conn: ConnArgs, output: Output, op: KvOp) -> Result<(), CliError> {
    let json = output == Output::Json;
    let (client, _) = client_from(&conn)?;
    let consistency = |stale: bool| {
        if stale {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        }
    };
    match op {
        KvOp::Get { key, stale } => {
            let value = client.get_with(key.clone(), consistency(stale)).await?;
            if json {
                let mut doc = Map::new();
                doc.insert("key".into(), key.clone().into());
                put_bytes(&mut doc, "value", value.as_ref());
                emit(doc);
            } else if let Some(v) = &value {
                println!("{}", show(v));
            }
            if value.is_none() {
                return Err(CliError::NotFound { key });
            }
        }
        KvOp::Put { key, value } => {
            let w = client.put(key.clone(), value.read()?).await?;
            print_replaced(json, &key, &w);
        }
        KvOp::Delete { key } => {
            let w = client.delete(key.clone()).await?;
            print_replaced(json, &key, &w);
        }
        KvOp::Cas {
            key,
            expected,
            expected_file,
            absent,
            new,
            value_file,
            remove,
        } => {
            let stdin = Some(Path::new("-"));
            if expected_file.as_deref() == stdin && value_file.as_deref() == stdin {
                return Err(CliError::Usage(
                    "only one of --expected-file and --value-file can be `-` (standard input)"
                        .into(),
                ));
            }
            let expected = match (expected, expected_file, absent) {
                (Some(v), None, false) => Some(Bytes::from(v)),
                (None, Some(path), false) => Some(read_value(&path)?),
                (None, None, true) => None,
                _ => {
                    return Err(CliError::Usage(
                        "give one of --expected VALUE, --expected-file PATH or --absent".into(),
                    ));
                }
            };
            let new = match (new, value_file, remove) {
                (Some(v), None, false) => Some(Bytes::from(v)),
                (None, Some(path), false) => Some(read_value(&path)?),
                (None, None, true) => None,
                _ => {
                    return Err(CliError::Usage(
                        "give one of --new VALUE, --value-file PATH or --remove".into(),
                    ));
                }
            };
            let w = client.cas(key.clone(), expected, new).await?;
            let WriteResult::Cas { swapped, current } = w.result else {
                return Err(CliError::Failed(format!(
                    "unexpected answer to a compare-and-swap: {:?}",
                    w.result
                )));
            };
            if json {
                let mut doc = write_doc(&key, w.index);
                doc.insert("swapped".into(), swapped.into());
                put_bytes(&mut doc, "current", current.as_ref());
                emit(doc);
            } else if swapped {
                println!("swapped (committed at index {})", w.index);
            }
            if !swapped {
                return Err(CliError::CasMismatch { current });
            }
        }
        KvOp::Append { key, value } => {
            let w = client.append(key.clone(), value.read()?).await?;
            match (json, w.result) {
                (true, result) => {
                    let mut doc = write_doc(&key, w.index);
                    if let WriteResult::Appended { len } = result {
                        doc.insert("len".into(), len.into());
                    }
                    emit(doc);
                }
                (false, WriteResult::Appended { len }) => println!(
                    "OK (committed at index {}; the value is now {len} bytes)",
                    w.index
                ),
                (false, other) => println!("OK (committed at index {}; {other:?})", w.index),
            }
        }
        KvOp::Scan {
            prefix,
            start,
            end,
            limit,
            stale,
        } => {
            let (start, end) = match start {
                Some(s) => (Bytes::from(s), end.map(Bytes::from)),
                None => (
                    Bytes::from(prefix.clone()),
                    end.map(Bytes::from)
                        .or_else(|| prefix_end(prefix.as_bytes())),
                ),
            };
            let (items, more) = client.scan(start, end, limit, consistency(stale)).await?;
            if json {
                let items: Vec<Value> = items
                    .iter()
                    .map(|(k, v)| {
                        let mut item = Map::new();
                        put_bytes(&mut item, "key", Some(k));
                        put_bytes(&mut item, "value", Some(v));
                        Value::Object(item)
                    })
                    .collect();
                emit(json!({ "items": items, "more": more }));
                return Ok(());
            }
            for (k, v) in &items {
                println!("{}\t{}", show(k), show(v));
            }
            if more {
                println!("... (more; raise --limit or scan from after the last key)");
            }
        }
    }
    Ok(())
}
