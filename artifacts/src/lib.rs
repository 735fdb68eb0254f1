//! The artifact store: a local folder (a shared mount for machines that share it) or an S3
//! prefix (`s3://bucket/prefix`). Checkpoints and model versions are written here by agents;
//! the coordinator archives finished sweeps here.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use url::Url;

/// What went wrong, and where (the store's root, or an object's URL).
#[derive(Debug, Clone, thiserror::Error)]
#[error("artifact store '{location}': {message}")]
pub struct ArtifactError {
    pub location: String,
    pub message: String,
}

/// Where checkpoints are written: a local folder (a shared mount for agents on several
/// machines) or an S3 prefix (`s3://bucket/prefix`). S3 credentials and region come from the
/// standard AWS environment (`AWS_REGION`, `AWS_ACCESS_KEY_ID`…, `AWS_ENDPOINT_URL`,
/// `AWS_ALLOW_HTTP`) or, on EC2, from the instance role through instance metadata.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    /// The root as a URL ending in `/`; object URIs are this joined with the key.
    root: Url,
}

impl ArtifactStore {
    /// Opens a store from a folder path or a URL (`file:///…`, `s3://…`). A folder is
    /// created if missing.
    pub fn open(location: &str) -> Result<ArtifactStore, ArtifactError> {
        ArtifactStore::open_with(location, &[])
    }

    /// As [`open`](Self::open), with S3 settings over those from the environment: pairs of
    /// object_store's `AmazonS3ConfigKey` names and values (`aws_endpoint`, `aws_region`,
    /// `aws_access_key_id`, `aws_allow_http`…). Ignored for folders.
    pub fn open_with(
        location: &str,
        s3_options: &[(&str, &str)],
    ) -> Result<ArtifactStore, ArtifactError> {
        let store_error = |message: String| ArtifactError {
            location: location.to_string(),
            message,
        };
        let root = match Url::parse(location) {
            Ok(url) if url.scheme().len() > 1 => url,
            _ => {
                std::fs::create_dir_all(location)
                    .map_err(|error| store_error(format!("cannot create the folder: {error}")))?;
                let absolute = std::fs::canonicalize(location)
                    .map_err(|error| store_error(error.to_string()))?;
                Url::from_directory_path(&absolute)
                    .map_err(|()| store_error("not an absolute path".into()))?
            }
        };
        let root = if root.path().ends_with('/') {
            root
        } else {
            Url::parse(&format!("{root}/")).map_err(|error| store_error(error.to_string()))?
        };
        if root.scheme() == "file" {
            let path = root
                .to_file_path()
                .map_err(|()| store_error("not a local path".into()))?;
            std::fs::create_dir_all(&path)
                .map_err(|error| store_error(format!("cannot create the folder: {error}")))?;
        }
        let store = open_store(&root, s3_options).map_err(store_error)?;
        Ok(ArtifactStore {
            store: Arc::from(store),
            root,
        })
    }

    /// Reads an object of this store by URI (one `put_new` returned).
    pub async fn get(&self, uri: &str) -> Result<Vec<u8>, ArtifactError> {
        let store_error = |message: String| ArtifactError {
            location: uri.to_string(),
            message,
        };
        let url = Url::parse(uri).map_err(|error| store_error(format!("not a URL: {error}")))?;
        read(self.store.as_ref(), &url).await.map_err(store_error)
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    /// Writes a new object at `key` (relative to the root), failing if one exists, and
    /// returns its URI.
    pub async fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<String, ArtifactError> {
        let url = self.key_url(key)?;
        let path = object_path(&url);
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&path, PutPayload::from(Bytes::from(bytes)), options)
            .await
            .map_err(|error| ArtifactError {
                location: url.to_string(),
                message: error.to_string(),
            })?;
        Ok(url.to_string())
    }
}

impl ArtifactStore {
    /// The URL of `key` under the root. Joined as `./KEY`, so a first segment with a colon
    /// (`ROLE:INSTANCE`) stays a path rather than becoming a URL scheme.
    fn key_url(&self, key: &str) -> Result<Url, ArtifactError> {
        let relative = format!("./{}", key.trim_start_matches('/'));
        self.root.join(&relative).map_err(|error| ArtifactError {
            location: self.root.to_string(),
            message: format!("bad key {key}: {error}"),
        })
    }

    /// The names of the "folders" right under the root (keys' first segments).
    pub async fn list_folders(&self) -> Result<Vec<String>, ArtifactError> {
        let root = object_path(&self.root);
        let prefix = (!root.as_ref().is_empty()).then_some(&root);
        let listed = self
            .store
            .list_with_delimiter(prefix)
            .await
            .map_err(|error| ArtifactError {
                location: self.root.to_string(),
                message: error.to_string(),
            })?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|path| path.filename().map(str::to_string))
            .collect())
    }

    /// Deletes the object at `key` (relative to the root); a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), ArtifactError> {
        let url = self.key_url(key)?;
        match self.store.delete(&object_path(&url)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(ArtifactError {
                location: url.to_string(),
                message: error.to_string(),
            }),
        }
    }
}

impl ArtifactStore {
    /// Writes the object at `key` (relative to the root), replacing one that exists, and
    /// returns its URI. For objects whose content is fixed by their key (an archived sweep),
    /// so writing one twice is harmless.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<String, ArtifactError> {
        let url = self.key_url(key)?;
        self.store
            .put(&object_path(&url), PutPayload::from(Bytes::from(bytes)))
            .await
            .map_err(|error| ArtifactError {
                location: url.to_string(),
                message: error.to_string(),
            })?;
        Ok(url.to_string())
    }

    /// Reads the object at `key` (relative to the root); `None` if there is none.
    pub async fn read(&self, key: &str) -> Result<Option<Vec<u8>>, ArtifactError> {
        let url = self.key_url(key)?;
        let store_error = |message: String| ArtifactError {
            location: url.to_string(),
            message,
        };
        match self.store.get(&object_path(&url)).await {
            Ok(result) => {
                let bytes = result
                    .bytes()
                    .await
                    .map_err(|error| store_error(error.to_string()))?;
                Ok(Some(bytes.to_vec()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(store_error(error.to_string())),
        }
    }

    /// The names of the objects right under `folder` (relative to the root), sorted; none
    /// if the folder does not exist.
    pub async fn list(&self, folder: &str) -> Result<Vec<String>, ArtifactError> {
        let url = self.key_url(&format!("{}/", folder.trim_end_matches('/')))?;
        let path = object_path(&url);
        let listed = match self.store.list_with_delimiter(Some(&path)).await {
            Ok(listed) => listed,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(error) => {
                return Err(ArtifactError {
                    location: url.to_string(),
                    message: error.to_string(),
                });
            }
        };
        let mut names: Vec<String> = listed
            .objects
            .iter()
            .filter_map(|object| object.location.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }
}

/// The object's path inside the store `open_store` returns for its URL.
fn object_path(url: &Url) -> ObjectPath {
    match url.scheme() {
        "file" => url
            .to_file_path()
            .ok()
            .and_then(|path| ObjectPath::from_absolute_path(path).ok())
            .unwrap_or_else(|| ObjectPath::from(url.path())),
        _ => ObjectPath::from(url.path().trim_start_matches('/')),
    }
}

/// A client for the store holding `url`: the file system, or S3 configured from the
/// environment and then `s3_options`.
fn open_store(url: &Url, s3_options: &[(&str, &str)]) -> Result<Box<dyn ObjectStore>, String> {
    match url.scheme() {
        "file" => object_store::parse_url(url)
            .map(|(store, _)| store)
            .map_err(|error| error.to_string()),
        "s3" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!(
                    "{url}: an S3 location needs a bucket (s3://BUCKET/PREFIX)"
                ));
            }
            // The S3 client's TLS: rustls on ring, installed once per process (a provider
            // installed earlier is kept).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str());
            for (key, value) in s3_options {
                let key = key
                    .parse()
                    .map_err(|error| format!("S3 option {key}: {error}"))?;
                builder = builder.with_config(key, *value);
            }
            let store = builder.build().map_err(|error| format!("{url}: {error}"))?;
            Ok(Box::new(store))
        }
        other => Err(format!(
            "{url}: unsupported artifact store scheme '{other}' (use a folder, file:// or s3://)"
        )),
    }
}

async fn read(store: &dyn ObjectStore, url: &Url) -> Result<Vec<u8>, String> {
    let result = store
        .get(&object_path(url))
        .await
        .map_err(|error| error.to_string())?;
    let bytes = result.bytes().await.map_err(|error| error.to_string())?;
    Ok(bytes.to_vec())
}

/// Reads an object by URI (on a store opened for it).
pub async fn fetch(uri: &str) -> Result<Vec<u8>, ArtifactError> {
    let store_error = |message: String| ArtifactError {
        location: uri.to_string(),
        message,
    };
    let url = Url::parse(uri).map_err(|error| store_error(format!("not a URL: {error}")))?;
    let store = open_store(&url, &[]).map_err(store_error)?;
    read(store.as_ref(), &url).await.map_err(store_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_are_written_read_listed_and_replaced_in_a_folder() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let store = ArtifactStore::open(dir.path().to_str().expect("utf-8")).expect("opens");
        assert_eq!(
            store.list("archive").await.expect("lists"),
            Vec::<String>::new()
        );
        assert_eq!(store.read("archive/a.bin").await.expect("reads"), None);
        store
            .put("archive/b.bin", b"two".to_vec())
            .await
            .expect("writes");
        store
            .put("archive/a.bin", b"one".to_vec())
            .await
            .expect("writes");
        store
            .put("archive/a.bin", b"uno".to_vec())
            .await
            .expect("replaces");
        store
            .put("other/c.bin", b"three".to_vec())
            .await
            .expect("writes");
        assert_eq!(
            store.list("archive").await.expect("lists"),
            ["a.bin", "b.bin"]
        );
        assert_eq!(
            store.read("archive/a.bin").await.expect("reads").as_deref(),
            Some(&b"uno"[..])
        );
        let uri = store
            .put_new("archive/d.bin", b"four".to_vec())
            .await
            .expect("new");
        assert!(
            store
                .put_new("archive/d.bin", b"again".to_vec())
                .await
                .is_err()
        );
        assert_eq!(fetch(&uri).await.expect("by URI"), b"four");
    }
}
