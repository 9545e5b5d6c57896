//! hmac-secret (CTAP 2.1 §12.5) and hmac-secret-mc (CTAP 2.2 §12.8): the
//! salts a platform sends encrypted with the clientPIN shared secret, and
//! HMAC-SHA-256(CredRandom, salt) sent back encrypted the same way — at
//! getAssertion, or, with hmac-secret-mc, at makeCredential already (what
//! browsers use for WebAuthn PRF at registration). One code for both.

use zeroize::Zeroizing;

use crate::authenticator::Authenticator;
use crate::pin_protocol::{hmac_sha256, PinUvAuthProtocol, SharedSecret};
use crate::request::HmacSecretInput;
use crate::status::{CtapResult, StatusCode};

/// hmac-secret's validated input: the shared secret and the salts.
pub(crate) struct HmacSecretRequest {
    shared: SharedSecret,
    salts: Zeroizing<Vec<u8>>,
}

impl Authenticator {
    /// Validates an hmac-secret or hmac-secret-mc input (§12.5, §12.8): the
    /// salts are authenticated with the shared secret and are one or two
    /// 32-byte values. Checked before anyone is asked to touch anything.
    pub(crate) fn hmac_secret_request(&self, input: &HmacSecretInput) -> CtapResult<HmacSecretRequest> {
        let protocol = PinUvAuthProtocol::from_id(input.protocol.unwrap_or(1))?;
        let shared = self.client_pin_key_agreement().shared_secret(protocol, input.key_agreement.clone())?;
        if !shared.verify(&input.salt_enc, &input.salt_auth) {
            return Err(StatusCode::PinAuthInvalid);
        }
        let salts = shared.decrypt(&input.salt_enc)?;
        if salts.len() != 32 && salts.len() != 64 {
            return Err(StatusCode::InvalidLength);
        }
        Ok(HmacSecretRequest { shared, salts })
    }

    /// HMAC-SHA-256(CredRandom, salt) for each salt, encrypted for the
    /// platform. CredRandom is the key store's PRF of the credential's key
    /// handle, one with and one without UV (§12.5): the same credential
    /// gives the same outputs at makeCredential and at getAssertion.
    pub(crate) fn hmac_secret_output(
        &mut self,
        key_handle: &[u8],
        request: &HmacSecretRequest,
        user_verified: bool,
    ) -> CtapResult<Vec<u8>> {
        let mut context = b"fidoseal hmac-secret CredRandom v1".to_vec();
        context.push(u8::from(user_verified));
        context.extend_from_slice(key_handle);
        let cred_random = self.platform.keystore.derive_secret(&context)?;
        let mut outputs = Zeroizing::new(Vec::with_capacity(request.salts.len()));
        for salt in request.salts.chunks(32) {
            outputs.extend_from_slice(&hmac_sha256(&cred_random.0, salt));
        }
        request.shared.encrypt(&outputs)
    }
}
