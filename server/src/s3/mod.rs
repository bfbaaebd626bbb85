//! The S3 API (issue 16): buckets and keys naming objects whose bytes are floe blobs, served
//! on its own listener (`s3_listen`) by every core.
//!
//! - [`sigv4`]: AWS Signature Version 4 (headers, presigned URLs, chunk signatures);
//! - [`sigv2`]: Signature Version 2 presigned URLs (boto3's default in us-east-1);
//! - [`chunked`]: `aws-chunked` bodies and S3's checksums;
//! - [`payload`]: a request's payload as an object's bytes, checked before its last byte;
//! - [`xml`]: S3's error answer, the documents it answers with, the bodies it takes;
//! - [`api`]: routing (path and virtual-host style), authentication, the operations.
//!
//! An object is a list of blobs ([`floe_storage::namespace::Object`]): a body larger than a
//! blob may be at the committee's n is stored as several, each published like
//! `PUT /v1/blobs` (deletable). The namespace (buckets, keys, uploads) lives in the node's
//! first data directory (`namespace.redb`).
//!
//! Invariants: an object is named (the namespace commit) only after every blob of it was
//! stored on the write quorum; a blob is deleted only when no name lists it and no request is
//! about to name it ([`S3::pin`] waits out a deletion, a deletion skips a pinned blob); the
//! namespace commit of a blob's last name records the release, so a crash before the deletion
//! loses nothing (the backlog is deleted at the next start).
//!
//! Boundary: each node of a committee has its own namespace until the control plane (issue
//! 17) makes it cluster-wide, so releases delete blobs only on a node that is the whole
//! committee; on a node among others a released blob stays (listed in `released`) rather
//! than be deleted under another node's name for it.

pub mod api;
pub mod chunked;
pub mod payload;
pub mod sigv2;
pub mod sigv4;
pub mod xml;

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floe_codec::BlobId;
use floe_control::namespace::EtcdNamespace;
use floe_storage::namespace::{
    Bucket, Completed, Listing, Namespace, NamespaceError, Object, Part, Upload,
};

use crate::config::S3Config;
use crate::state::CoreState;

/// Where buckets and keys live: this node's `namespace.redb`, or etcd, shared by every node
/// of a cluster on it (`floe_control::namespace`). The same operations either way.
pub enum Names {
    Local(Namespace),
    Etcd(Box<EtcdNamespace>),
}

macro_rules! names_delegate {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {$(
        pub fn $name(&self $(, $arg: $ty)*) -> $ret {
            match self {
                Names::Local(ns) => ns.$name($($arg),*),
                Names::Etcd(ns) => ns.$name($($arg),*),
            }
        }
    )*};
}

impl Names {
    names_delegate! {
        fn create_bucket(&self, name: &str) -> Result<(), NamespaceError>;
        fn bucket(&self, name: &str) -> Result<Option<Bucket>, NamespaceError>;
        fn buckets(&self) -> Result<Vec<(String, Bucket)>, NamespaceError>;
        fn delete_bucket(&self, name: &str) -> Result<(), NamespaceError>;
        fn object(&self, bucket: &str, key: &str) -> Result<Option<Object>, NamespaceError>;
        fn put_object(&self, bucket: &str, key: &str, object: &Object, if_none_match: bool) -> Result<Vec<[u8; 32]>, NamespaceError>;
        fn put_objects(&self, bucket: &str, objects: &[(String, Object)]) -> Result<Vec<[u8; 32]>, NamespaceError>;
        fn delete_object(&self, bucket: &str, key: &str) -> Result<Vec<[u8; 32]>, NamespaceError>;
        fn create_upload(&self, upload_id: &str, bucket: &str, key: &str, template: &Object) -> Result<(), NamespaceError>;
        fn upload(&self, upload_id: &str) -> Result<Option<Upload>, NamespaceError>;
        fn put_part(&self, upload_id: &str, number: u32, part: &Part) -> Result<Vec<[u8; 32]>, NamespaceError>;
        fn parts(&self, upload_id: &str, after: u32, limit: usize) -> Result<Vec<(u32, Part)>, NamespaceError>;
        fn abort_upload(&self, upload_id: &str) -> Result<Vec<[u8; 32]>, NamespaceError>;
        fn uploads(&self, bucket: &str, prefix: &str, after: Option<(&str, &str)>, limit: usize) -> Result<Vec<(String, String, Upload)>, NamespaceError>;
        fn list(&self, bucket: &str, prefix: &str, delimiter: Option<&str>, after: Option<&str>, max_keys: usize) -> Result<Listing, NamespaceError>;
    }

    pub fn complete_upload<E>(
        &self,
        upload_id: &str,
        build: impl FnOnce(&Upload, &[(u32, Part)]) -> Result<Object, E>,
    ) -> Result<Result<Completed, E>, NamespaceError> {
        match self {
            Names::Local(ns) => ns.complete_upload(upload_id, build),
            Names::Etcd(ns) => ns.complete_upload(upload_id, build),
        }
    }

    /// How many names `blob_id` has: kept only by the local namespace (etcd's releases nothing).
    pub fn names(&self, blob_id: &[u8; 32]) -> Result<u64, NamespaceError> {
        match self {
            Names::Local(ns) => ns.names(blob_id),
            Names::Etcd(_) => Err(NamespaceError::Database(
                "name counts are not kept in etcd: blobs are not released there".into(),
            )),
        }
    }

    /// Blobs released and not yet forgotten (none on etcd).
    pub fn released(&self, limit: usize) -> Result<Vec<[u8; 32]>, NamespaceError> {
        match self {
            Names::Local(ns) => ns.released(limit),
            Names::Etcd(_) => Ok(Vec::new()),
        }
    }

    pub fn forget_released(&self, blobs: &[[u8; 32]]) -> Result<(), NamespaceError> {
        match self {
            Names::Local(ns) => ns.forget_released(blobs),
            Names::Etcd(_) => Ok(()),
        }
    }
}

/// What every core's S3 API shares.
pub struct S3 {
    pub config: S3Config,
    pub namespace: Names,
    /// Whether a released blob is deleted (this node is the whole committee).
    pub deletes_released: bool,
    /// Blobs a request is about to name (count of requests).
    pins: Mutex<HashMap<[u8; 32], usize>>,
    /// Blobs being deleted.
    deleting: Mutex<HashSet<[u8; 32]>>,
}

impl S3 {
    pub fn new(config: S3Config, namespace: Names, deletes_released: bool) -> Self {
        Self {
            config,
            namespace,
            deletes_released,
            pins: Mutex::default(),
            deleting: Mutex::default(),
        }
    }

    /// The secret of an access key.
    pub fn secret_of(&self, access_key: &str) -> Option<String> {
        self.config
            .keys
            .iter()
            .find(|k| k.access_key_id == access_key)
            .map(|k| k.secret_access_key.clone())
    }

    /// Runs `f` on the namespace off the serving core (redb's I/O blocks).
    pub async fn ns<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Names) -> T + Send + 'static,
    ) -> T {
        let s3 = self.clone();
        glommio::executor()
            .spawn_blocking(move || f(&s3.namespace))
            .await
    }

    /// Pins `blob_id` (a request is about to name it): waits while it is being deleted, and
    /// keeps it from being deleted until the guard drops.
    pub async fn pin(self: &Arc<Self>, pins: &mut Pinned, blob_id: [u8; 32]) {
        loop {
            {
                let deleting = self.deleting.lock().expect("not poisoned");
                if !deleting.contains(&blob_id) {
                    let mut held = self.pins.lock().expect("not poisoned");
                    *held.entry(blob_id).or_insert(0) += 1;
                    pins.blobs.push(blob_id);
                    return;
                }
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Releases `blobs` in the background: the answer does not wait for their deletion (an
    /// object of many blobs takes a deletion each). The namespace recorded the release in the
    /// commit that made it, so a deletion cut short by a stop or a crash is done at the next
    /// start.
    pub fn release_later(self: &Arc<Self>, state: &Rc<CoreState>, blobs: Vec<[u8; 32]>) {
        if !self.deletes_released || blobs.is_empty() {
            return;
        }
        let (s3, state) = (self.clone(), state.clone());
        crate::task::spawn_detached("s3_release", async move { s3.release(&state, blobs).await });
    }

    /// Deletes those of `blobs` that no name lists and no request pinned (this node being the
    /// whole committee), then forgets them as released. Failures are logged: the blob stays
    /// released and the next start tries again.
    pub async fn release(self: &Arc<Self>, state: &Rc<CoreState>, blobs: Vec<[u8; 32]>) {
        if !self.deletes_released || blobs.is_empty() {
            return;
        }
        let mut forget = Vec::new();
        for blob in blobs {
            let Some(_deleting) = Deleting::take(self, blob) else {
                continue; // pinned: a request is naming it
            };
            match self.ns(move |ns| ns.names(&blob)).await {
                Ok(0) => {}
                Ok(_) => {
                    forget.push(blob);
                    continue;
                }
                Err(err) => {
                    tracing::warn!(%err, "the namespace failed; the blob stays released");
                    continue;
                }
            }
            let blob_id = BlobId(blob);
            match crate::publisher::delete(state, blob_id).await {
                Ok(_) => {
                    state.shared.metrics.s3_blobs_deleted.inc();
                    forget.push(blob);
                }
                Err(err) if err.code == "blobNotFound" => forget.push(blob),
                Err(err) => {
                    tracing::warn!(blob = %blob_id, %err, "a released blob was not deleted; the next start retries")
                }
            }
        }
        if !forget.is_empty() {
            if let Err(err) = self.ns(move |ns| ns.forget_released(&forget)).await {
                tracing::warn!(%err, "forgetting released blobs failed; the next start retries");
            }
        }
    }

    /// Deletes what an earlier run released and did not delete (at start, on one core).
    pub async fn release_backlog(self: &Arc<Self>, state: &Rc<CoreState>) {
        if !self.deletes_released {
            return;
        }
        loop {
            let backlog = match self.ns(|ns| ns.released(256)).await {
                Ok(backlog) if !backlog.is_empty() => backlog,
                Ok(_) => return,
                Err(err) => {
                    tracing::warn!(%err, "reading the released blobs failed");
                    return;
                }
            };
            let count = backlog.len();
            self.release(state, backlog.clone()).await;
            tracing::info!(count, "deleted blobs an earlier run released");
            // Whatever is still listed failed to delete: leave it for the next start.
            let left = self.ns(|ns| ns.released(256)).await.unwrap_or_default();
            if left.iter().any(|b| backlog.contains(b)) {
                return;
            }
        }
    }
}

/// Blobs a request pinned ([`S3::pin`]): the blobs it stored for a new name, and those of a
/// copy's source. Unpinned on drop, on every path; unless the request named them
/// ([`Pinned::named`]), they are released then too, so that a request that failed, or whose
/// client hung up (hyper drops its future), leaves no unnamed blob behind (a release deletes
/// only blobs that no name lists).
pub struct Pinned {
    s3: Arc<S3>,
    state: Rc<CoreState>,
    blobs: Vec<[u8; 32]>,
    named: bool,
}

impl Pinned {
    pub fn new(s3: &Arc<S3>, state: &Rc<CoreState>) -> Self {
        Self {
            s3: s3.clone(),
            state: state.clone(),
            blobs: Vec::new(),
            named: false,
        }
    }

    /// The request named its blobs (committed): nothing to release.
    pub fn named(mut self) {
        self.named = true;
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        {
            let mut held = self.s3.pins.lock().expect("not poisoned");
            for blob in &self.blobs {
                if let Some(count) = held.get_mut(blob) {
                    *count -= 1;
                    if *count == 0 {
                        held.remove(blob);
                    }
                }
            }
        }
        if !self.named {
            self.s3
                .release_later(&self.state, std::mem::take(&mut self.blobs));
        }
    }
}

/// A blob being deleted; taken only while no request pins it, given back on drop.
struct Deleting {
    s3: Arc<S3>,
    blob: [u8; 32],
}

impl Deleting {
    fn take(s3: &Arc<S3>, blob: [u8; 32]) -> Option<Self> {
        let mut deleting = s3.deleting.lock().expect("not poisoned");
        let pins = s3.pins.lock().expect("not poisoned");
        if pins.contains_key(&blob) || !deleting.insert(blob) {
            return None;
        }
        Some(Self {
            s3: s3.clone(),
            blob,
        })
    }
}

impl Drop for Deleting {
    fn drop(&mut self) {
        self.s3
            .deleting
            .lock()
            .expect("not poisoned")
            .remove(&self.blob);
    }
}
