//! The artifact store on S3, against `moto_server` (PyPI `moto[server]`, an AWS-compatible
//! endpoint started by the test on loopback; `FLOTILLA_MOTO_SERVER` names the program,
//! `scripts/test.sh` installs it): checkpoints are written under the prefix, read back by
//! URI, never overwritten, and a missing bucket is a clear error.

use flotilla_harness::Moto;
use flotilla_train::ArtifactStore;

fn options(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("aws_endpoint", format!("http://127.0.0.1:{port}")),
        ("aws_allow_http", "true".into()),
        ("aws_region", "us-east-1".into()),
        ("aws_access_key_id", "testing".into()),
        ("aws_secret_access_key", "testing".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_round_trip_through_s3() {
    let moto = Moto::start_temporary();
    let port = moto.port;
    moto.create_bucket("flotilla-checkpoints");
    let options = options(port);
    let options: Vec<(&str, &str)> = options.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let store = ArtifactStore::open_with("s3://flotilla-checkpoints/team-a", &options)
        .expect("open the S3 store");
    assert_eq!(
        store.root().as_str(),
        "s3://flotilla-checkpoints/team-a/",
        "the prefix is a folder"
    );
    let uri = store
        .put_new("checkpoints/s1-t0/a0000.ckpt", b"weights".to_vec())
        .await
        .expect("write a checkpoint");
    assert_eq!(
        uri,
        "s3://flotilla-checkpoints/team-a/checkpoints/s1-t0/a0000.ckpt"
    );
    assert_eq!(store.get(&uri).await.expect("read it back"), b"weights");
    // A checkpoint is written once: a second write to the same key is refused.
    let again = store
        .put_new("checkpoints/s1-t0/a0000.ckpt", b"other".to_vec())
        .await;
    assert!(again.is_err(), "{again:?}");
    assert_eq!(store.get(&uri).await.expect("still there"), b"weights");

    // A bucket that does not exist fails on first use, naming the object.
    let missing = ArtifactStore::open_with("s3://no-such-bucket/x", &options).expect("open");
    let error = missing
        .put_new("k", b"v".to_vec())
        .await
        .expect_err("no bucket");
    assert!(
        error.to_string().contains("s3://no-such-bucket/x/k"),
        "{error}"
    );
}

#[test]
fn an_s3_location_needs_a_bucket() {
    let error = ArtifactStore::open("s3:///prefix").expect_err("no bucket");
    assert!(error.to_string().contains("needs a bucket"), "{error}");
}
