//! authenticatorLargeBlobs (CTAP 2.1 §6.10): the serialized large-blob
//! array, read in fragments and replaced atomically after an
//! integrity-checked, fragment-by-fragment write.

use ciborium::value::Value;
use sha2::{Digest, Sha256};

use crate::authenticator::{Authenticator, RequestContext};
use crate::cbor::{self, MapBuilder};
use crate::client_pin::permission;
use crate::command::LargeBlobsRequest;
use crate::ctaphid::ADVERTISED_MAX_MSG_SIZE;
use crate::pending::{Pending, PendingOperation};
use crate::status::{CtapResult, StatusCode};

/// maxSerializedLargeBlobArray in getInfo (at least 1024 by the spec).
pub const MAX_SERIALIZED_LARGE_BLOB_ARRAY: usize = 4096;
/// maxFragmentLength = maxMsgSize − 64 (§6.10.1).
pub(crate) const MAX_FRAGMENT_LENGTH: usize = ADVERTISED_MAX_MSG_SIZE - 64;
/// The array ends with LEFT(SHA-256(rest), 16).
const INTEGRITY_LEN: usize = 16;

/// A write in progress (§6.10.3 "expectedLength", "expectedNextOffset"; its
/// channel and timer: pending.rs).
pub(crate) struct PendingLargeBlobWrite {
    expected_length: usize,
    buffer: Vec<u8>,
}

impl Authenticator {
    pub(crate) fn large_blobs(
        &mut self,
        request: LargeBlobsRequest,
        ctx: &RequestContext<'_>,
    ) -> CtapResult<Option<Value>> {
        match request {
            LargeBlobsRequest::Get { offset, length } => {
                let array = &self.state.large_blob_array;
                if offset > array.len() {
                    return Err(StatusCode::InvalidParameter);
                }
                let end = offset.saturating_add(length).min(array.len());
                Ok(Some(MapBuilder::new().int(0x01, cbor::bytes(array[offset..end].to_vec())).build()))
            }
            LargeBlobsRequest::Set { fragment, offset, length, pin_uv_auth_param, protocol } => {
                self.large_blob_set(fragment, offset, length, pin_uv_auth_param, protocol, ctx).map(|()| None)
            }
        }
    }

    fn pending_large_blob_write(&self) -> Option<&PendingLargeBlobWrite> {
        match self.pending.as_ref().map(|p| &p.operation) {
            Some(PendingOperation::LargeBlobWrite(write)) => Some(write),
            _ => None,
        }
    }

    fn large_blob_set(
        &mut self,
        fragment: Vec<u8>,
        offset: usize,
        length: Option<u64>,
        auth_param: Option<Vec<u8>>,
        protocol: Option<u64>,
        ctx: &RequestContext<'_>,
    ) -> CtapResult<()> {
        if fragment.len() > MAX_FRAGMENT_LENGTH {
            return Err(StatusCode::InvalidLength);
        }
        if offset == 0 {
            let length = usize::try_from(length.ok_or(StatusCode::InvalidParameter)?)
                .map_err(|_| StatusCode::LargeBlobStorageFull)?;
            if length > MAX_SERIALIZED_LARGE_BLOB_ARRAY {
                return Err(StatusCode::LargeBlobStorageFull);
            }
            if length < 17 {
                return Err(StatusCode::InvalidParameter);
            }
            let write = PendingLargeBlobWrite { expected_length: length, buffer: Vec::new() };
            self.pending = Some(Pending::new(ctx.channel, ctx.now, PendingOperation::LargeBlobWrite(write)));
        } else if length.is_some() {
            return Err(StatusCode::InvalidParameter);
        }
        let expected_next = self.pending_large_blob_write().map(|p| p.buffer.len());
        if expected_next != Some(offset) {
            return Err(StatusCode::InvalidSeq);
        }
        // §6.10.3 step 5: a protected key, or alwaysUv, wants an lbw token.
        if self.is_protected() || self.state.always_uv {
            // 32×0xff ‖ h'0c00' ‖ uint32LE(offset) ‖ SHA-256(set) (§6.10.3 step 5).
            let mut message = vec![0xff; 32];
            message.extend_from_slice(&[0x0c, 0x00]);
            message.extend_from_slice(&(offset as u32).to_le_bytes());
            message.extend_from_slice(&Sha256::digest(&fragment));
            let param = auth_param.as_deref();
            self.verify_command_token(protocol, param, &message, permission::LARGE_BLOB_WRITE, ctx.now)?;
        }
        let Some(pending) = self.pending.as_mut() else {
            return Err(StatusCode::InvalidSeq);
        };
        let PendingOperation::LargeBlobWrite(write) = &mut pending.operation else {
            return Err(StatusCode::InvalidSeq);
        };
        if offset + fragment.len() > write.expected_length {
            return Err(StatusCode::InvalidParameter);
        }
        write.buffer.extend_from_slice(&fragment);
        if write.buffer.len() < write.expected_length {
            pending.stepped(ctx.now);
            return Ok(());
        }
        let Some(Pending { operation: PendingOperation::LargeBlobWrite(complete), .. }) = self.pending.take() else {
            return Err(StatusCode::Other);
        };
        let (body, check) = complete.buffer.split_at(complete.buffer.len() - INTEGRITY_LEN);
        if Sha256::digest(body)[..INTEGRITY_LEN] != *check {
            return Err(StatusCode::IntegrityFailure);
        }
        let mut state = self.state.clone();
        state.large_blob_array = complete.buffer;
        tracing::info!(bytes = state.large_blob_array.len(), "large-blob array replaced");
        self.save_state(state)
    }
}
