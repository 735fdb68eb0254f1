//! Checkpoints of command trials: a directory the program commits, stored as one object.
//!
//! A command trial writes files into `FLOTILLA_CHECKPOINT_DIR` and prints
//! `@flotilla checkpoint`. When the agent reads that line it *takes* the directory as it
//! stands ([`take_directory`]: one rename, so what is committed is exactly what was there,
//! and the program gets a new empty directory at the same path at once). The taken
//! directory is packed ([`pack`]) as one tar archive, its first entry a manifest naming the
//! trial, attempt, step and epoch, and written under a unique name into the artifact store.
//! Only a whole object is ever written (a folder store renames a finished file into place;
//! S3 shows an object only once its upload completed), and only then does the trial's
//! `latest` pointer move, so nothing half-uploaded becomes the checkpoint a later attempt
//! resumes from. A later attempt gets the archive unpacked ([`unpack`]) into a local
//! directory, `FLOTILLA_RESUME_FROM`.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The archive's first entry.
pub const MANIFEST: &str = ".flotilla-checkpoint.json";

/// What a checkpoint archive says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub trial: String,
    pub attempt: u32,
    /// The step the checkpoint belongs to (the line's `step=`, else the last metric step).
    pub step: u64,
    /// Completed epochs (the line's `epoch=`, else the last `epoch` metric reported).
    pub epoch: u32,
    pub files: u64,
    /// Bytes of file content (the archive adds headers).
    pub bytes: u64,
}

/// Why a committed directory could not become a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error(
        "the checkpoint in {dir} holds {bytes} bytes, over this agent's limit of {limit} bytes (--checkpoint-max-bytes); it was not uploaded"
    )]
    TooLarge { dir: String, bytes: u64, limit: u64 },
    #[error("cannot read {path} in the committed checkpoint: {message}; it was not uploaded")]
    Unreadable { path: String, message: String },
}

/// Takes the program's checkpoint directory for a commit: renames it to `to` and puts a new
/// empty directory at its path. `Ok(None)` when there is nothing in it to commit.
pub fn take_directory(dir: &Path, to: &Path) -> Result<Option<PathBuf>, String> {
    let mut entries = std::fs::read_dir(dir).map_err(|error| {
        format!(
            "cannot read the checkpoint directory {}: {error}",
            dir.display()
        )
    })?;
    if entries.next().is_none() {
        return Ok(None);
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
    }
    std::fs::rename(dir, to).map_err(|error| {
        format!(
            "cannot take the checkpoint directory {}: {error}",
            dir.display()
        )
    })?;
    std::fs::create_dir(dir).map_err(|error| {
        format!(
            "cannot make a new checkpoint directory {}: {error}",
            dir.display()
        )
    })?;
    Ok(Some(to.to_path_buf()))
}

/// A file or folder to archive, relative to the checkpoint's root.
struct Member {
    relative: PathBuf,
    source: PathBuf,
    directory: bool,
    bytes: u64,
    mode: u32,
}

/// Lists `dir`'s contents (following symbolic links to what they name), refusing anything
/// that is not a regular file or a folder, and the whole when it holds more than `limit`.
fn members(dir: &Path, limit: u64) -> Result<Vec<Member>, PackError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |path: &Path, message: String| PackError::Unreadable {
        path: path.display().to_string(),
        message,
    };
    let mut members = Vec::new();
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&folder)
            .map_err(|error| unreadable(&folder, error.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|error| unreadable(&folder, error.to_string()))?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let path = entry.path();
            let metadata = std::fs::metadata(&path).map_err(|error| {
                let dangling = std::fs::symlink_metadata(&path).is_ok();
                unreadable(
                    &path,
                    if dangling {
                        format!("{error} (a symbolic link to nothing?)")
                    } else {
                        error.to_string()
                    },
                )
            })?;
            let relative = path
                .strip_prefix(dir)
                .map_err(|error| unreadable(&path, error.to_string()))?
                .to_path_buf();
            let mode = metadata.permissions().mode() & 0o7777;
            if metadata.is_dir() {
                pending.push(path.clone());
                members.push(Member {
                    relative,
                    source: path,
                    directory: true,
                    bytes: 0,
                    mode,
                });
            } else if metadata.is_file() {
                total = total.saturating_add(metadata.len());
                if total > limit {
                    return Err(PackError::TooLarge {
                        dir: dir.display().to_string(),
                        bytes: total,
                        limit,
                    });
                }
                members.push(Member {
                    relative,
                    source: path,
                    directory: false,
                    bytes: metadata.len(),
                    mode,
                });
            } else {
                return Err(unreadable(
                    &path,
                    "not a regular file or a folder (a pipe, socket or device cannot be checkpointed)".into(),
                ));
            }
        }
    }
    Ok(members)
}

/// Packs a committed directory into one archive, `manifest` first (its `files` and `bytes`
/// filled in here). Blocking: call it on a blocking thread.
pub fn pack(dir: &Path, mut manifest: Manifest, limit: u64) -> Result<Vec<u8>, PackError> {
    let members = members(dir, limit)?;
    manifest.files = members.iter().filter(|member| !member.directory).count() as u64;
    manifest.bytes = members.iter().map(|member| member.bytes).sum();
    let unreadable = |path: &Path, error: std::io::Error| PackError::Unreadable {
        path: path.display().to_string(),
        message: error.to_string(),
    };
    let mut archive = tar::Builder::new(Vec::with_capacity(
        usize::try_from(manifest.bytes).unwrap_or(0) + 512 * (members.len() + 2),
    ));
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest_bytes.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    archive
        .append_data(&mut header, MANIFEST, manifest_bytes.as_slice())
        .map_err(|error| unreadable(Path::new(MANIFEST), error))?;
    for member in &members {
        let mut header = tar::Header::new_gnu();
        header.set_mode(member.mode);
        if member.directory {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            archive
                .append_data(&mut header, &member.relative, std::io::empty())
                .map_err(|error| unreadable(&member.source, error))?;
            continue;
        }
        let file = std::fs::File::open(&member.source)
            .map_err(|error| unreadable(&member.source, error))?;
        // The size was measured when listing; a file that grew since is cut there, one that
        // shrank is refused (the program wrote into a committed checkpoint).
        let mut contents = Vec::new();
        file.take(member.bytes)
            .read_to_end(&mut contents)
            .map_err(|error| unreadable(&member.source, error))?;
        if contents.len() as u64 != member.bytes {
            return Err(PackError::Unreadable {
                path: member.source.display().to_string(),
                message: format!(
                    "it shrank from {} to {} bytes while being read",
                    member.bytes,
                    contents.len()
                ),
            });
        }
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(member.bytes);
        archive
            .append_data(&mut header, &member.relative, contents.as_slice())
            .map_err(|error| unreadable(&member.source, error))?;
    }
    archive.into_inner().map_err(|error| unreadable(dir, error))
}

/// Unpacks a checkpoint archive read from `uri` into `dest` (created), returning its
/// manifest. Refuses entries that would land outside `dest`. Blocking.
pub fn unpack(bytes: &[u8], uri: &str, dest: &Path) -> Result<Manifest, String> {
    let bad = |message: String| format!("checkpoint {uri} cannot be restored: {message}");
    std::fs::create_dir_all(dest)
        .map_err(|error| bad(format!("cannot create {}: {error}", dest.display())))?;
    let mut archive = tar::Archive::new(bytes);
    let mut manifest = None;
    let entries = archive
        .entries()
        .map_err(|error| bad(format!("not a checkpoint archive: {error}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|error| bad(format!("damaged archive: {error}")))?;
        let path = entry
            .path()
            .map_err(|error| bad(format!("bad entry name: {error}")))?
            .into_owned();
        if path == Path::new(MANIFEST) {
            let mut text = Vec::new();
            entry
                .read_to_end(&mut text)
                .map_err(|error| bad(format!("cannot read its manifest: {error}")))?;
            manifest = Some(
                serde_json::from_slice::<Manifest>(&text)
                    .map_err(|error| bad(format!("its manifest is not valid: {error}")))?,
            );
            continue;
        }
        let inside = entry
            .unpack_in(dest)
            .map_err(|error| bad(format!("cannot write {}: {error}", path.display())))?;
        if !inside {
            return Err(bad(format!(
                "entry {} would land outside the resume folder",
                path.display()
            )));
        }
    }
    manifest.ok_or_else(|| bad("no manifest: not a command trial's checkpoint".into()))
}

/// Reads a checkpoint archive's manifest without unpacking it (the archive's first entry).
pub fn read_manifest(bytes: &[u8], uri: &str) -> Result<Manifest, String> {
    let bad = |message: String| format!("{uri}: {message}");
    let mut archive = tar::Archive::new(bytes);
    let mut entries = archive
        .entries()
        .map_err(|error| bad(format!("not a checkpoint archive: {error}")))?;
    let mut first = entries
        .next()
        .ok_or_else(|| bad("an empty archive".into()))?
        .map_err(|error| bad(format!("damaged archive: {error}")))?;
    let is_manifest = first
        .path()
        .map(|path| path == Path::new(MANIFEST))
        .unwrap_or(false);
    if !is_manifest {
        return Err(bad(format!("no manifest ({MANIFEST}) as its first entry")));
    }
    let mut text = Vec::new();
    first
        .read_to_end(&mut text)
        .map_err(|error| bad(format!("cannot read its manifest: {error}")))?;
    serde_json::from_slice(&text)
        .map_err(|error| bad(format!("its manifest is not valid: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            trial: "s1-t0".into(),
            attempt: 2,
            step: 7,
            epoch: 3,
            files: 0,
            bytes: 0,
        }
    }

    #[test]
    fn a_committed_directory_round_trips_through_an_archive() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let dir = scratch.path().join("checkpoint");
        std::fs::create_dir_all(dir.join("optimizer")).expect("mkdir");
        std::fs::write(dir.join("model.bin"), [1u8, 2, 3]).expect("write");
        std::fs::write(dir.join("optimizer/state.json"), b"{\"lr\":0.1}").expect("write");
        let taken = take_directory(&dir, &scratch.path().join("commits/1"))
            .expect("taken")
            .expect("not empty");
        // The program's path is a new, empty directory at once.
        assert_eq!(std::fs::read_dir(&dir).expect("read").count(), 0);
        let bytes = pack(&taken, manifest(), 1 << 20).expect("packed");
        let restored = scratch.path().join("resume");
        let read = unpack(&bytes, "file:///x.tar", &restored).expect("unpacked");
        assert_eq!(
            (read.files, read.bytes, read.step, read.epoch),
            (2, 13, 7, 3)
        );
        assert_eq!(
            std::fs::read(restored.join("model.bin")).expect("read"),
            [1, 2, 3]
        );
        assert_eq!(
            std::fs::read(restored.join("optimizer/state.json")).expect("read"),
            b"{\"lr\":0.1}"
        );
        assert!(!restored.join(MANIFEST).exists());
    }

    #[test]
    fn empty_oversized_and_unreadable_directories_are_refused_by_name() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let dir = scratch.path().join("checkpoint");
        std::fs::create_dir_all(&dir).expect("mkdir");
        assert_eq!(take_directory(&dir, &scratch.path().join("c/1")), Ok(None));
        let missing = take_directory(&scratch.path().join("gone"), &scratch.path().join("c/2"))
            .expect_err("missing");
        assert!(
            missing.contains("cannot read the checkpoint directory"),
            "{missing}"
        );

        std::fs::write(dir.join("weights.bin"), vec![0u8; 2048]).expect("write");
        let error = pack(&dir, manifest(), 1024).expect_err("too large");
        assert!(matches!(
            error,
            PackError::TooLarge {
                bytes: 2048,
                limit: 1024,
                ..
            }
        ));
        assert!(
            error.to_string().contains("--checkpoint-max-bytes"),
            "{error}"
        );

        std::os::unix::fs::symlink(scratch.path().join("nowhere"), dir.join("link"))
            .expect("symlink");
        let error = pack(&dir, manifest(), 1 << 20).expect_err("dangling link");
        assert!(error.to_string().contains("link"), "{error}");
        std::fs::remove_file(dir.join("link")).expect("rm");
        let made = std::process::Command::new("mkfifo")
            .arg(dir.join("pipe"))
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let error = pack(&dir, manifest(), 1 << 20).expect_err("a pipe");
        assert!(error.to_string().contains("pipe"), "{error}");
    }

    #[test]
    fn archives_without_a_manifest_or_escaping_entries_are_refused() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let error = unpack(b"not a tar at all", "u", scratch.path()).expect_err("garbage");
        assert!(error.contains("checkpoint u cannot be restored"), "{error}");
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, "a.bin", &[1u8][..])
            .expect("append");
        let bytes = builder.into_inner().expect("tar");
        let error = unpack(&bytes, "u", &scratch.path().join("r")).expect_err("no manifest");
        assert!(error.contains("no manifest"), "{error}");
    }
}
