//! Small files on the S3 store of `scripts/services up s3`: creation only when absent and
//! replacement only when unchanged, the two interleavings of two writers forced.

use txpipe_connectors::objects::Objects;

#[path = "common/s3.rs"]
mod s3;

#[tokio::test]
async fn of_two_writers_only_the_first_creates_and_only_one_replaces_what_both_read() {
    let (location, options) = s3::s3_location("objects");
    let objects = Objects::open(&location, &options).unwrap();
    assert!(objects.get("CURRENT").await.unwrap().is_none());
    // Creation: the second writer finds the object there.
    assert!(objects.put_if("CURRENT", b"000001\n".to_vec(), None).await.unwrap());
    assert!(!objects.put_if("CURRENT", b"000009\n".to_vec(), None).await.unwrap());
    // Replacement: both read the same object; the first to write wins, the second is refused
    // because what it read has changed.
    let a = objects.get("CURRENT").await.unwrap().unwrap();
    let b = objects.get("CURRENT").await.unwrap().unwrap();
    assert_eq!(a.bytes, b"000001\n");
    assert!(objects.put_if("CURRENT", b"000002\n".to_vec(), Some(&a.seen)).await.unwrap());
    assert!(!objects.put_if("CURRENT", b"000003\n".to_vec(), Some(&b.seen)).await.unwrap());
    assert_eq!(objects.get("CURRENT").await.unwrap().unwrap().bytes, b"000002\n");
    // Folders under a prefix, by name.
    objects.put("versions/000001/model.json", b"{}".to_vec()).await.unwrap();
    objects.put("versions/000002/model.json", b"{}".to_vec()).await.unwrap();
    let mut folders = objects.folders("versions").await.unwrap();
    folders.sort();
    assert_eq!(folders, ["000001", "000002"]);
    // Deleting; deleting what is not there is no error. (The store may keep the empty folder:
    // the objects under a prefix say what is there.)
    objects.delete("versions/000002/model.json").await.unwrap();
    objects.delete("versions/000002/model.json").await.unwrap();
    assert!(objects.get("versions/000002/model.json").await.unwrap().is_none());
    assert_eq!(objects.names("versions").await.unwrap(), ["versions/000001/model.json"]);
    assert_eq!(objects.url_of("CURRENT"), format!("{location}/CURRENT"));
}
