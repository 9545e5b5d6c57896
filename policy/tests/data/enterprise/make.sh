#!/bin/sh
# Regenerates the enterprise attestation test keys and certificates (test
# data only: these private keys are public). Run from this directory.
set -eu
AAGUID=5a0e3c1f8b474d529e612cf07d13a846 # fidoseal's (ctap/src/authenticator.rs)
days=36500

cat > leaf.cnf <<CNF
[good]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
1.3.6.1.4.1.45724.1.1.4 = DER:0410$AAGUID
[ca]
basicConstraints = critical, CA:TRUE
[other_aaguid]
basicConstraints = critical, CA:FALSE
1.3.6.1.4.1.45724.1.1.4 = DER:041000112233445566778899aabbccddeeff
[root]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign
CNF

openssl ecparam -name prime256v1 -genkey -noout -out root-ca.key
openssl req -new -x509 -key root-ca.key -days $days -subj "/C=DE/O=Example Corp/CN=Example Corp Attestation Root" \
    -extensions root -config leaf.cnf -out root-ca.pem 2>/dev/null ||
  openssl req -new -x509 -key root-ca.key -days $days -subj "/C=DE/O=Example Corp/CN=Example Corp Attestation Root" \
    -addext "basicConstraints=critical,CA:TRUE" -out root-ca.pem

# The attestation key in both PEM forms: SEC1 and PKCS#8.
openssl ecparam -name prime256v1 -genkey -noout -out attestation-sec1.key
openssl pkcs8 -topk8 -nocrypt -in attestation-sec1.key -out attestation-pkcs8.key
openssl ecparam -name prime256v1 -genkey -noout -out other.key
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key 2>/dev/null

leaf() { # name subject extensions
  openssl req -new -key attestation-sec1.key -subj "$2" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA root-ca.pem -CAkey root-ca.key -set_serial "0x$(openssl rand -hex 8)" \
      -days $days -extfile leaf.cnf -extensions "$3" -out "$1.pem" 2>/dev/null
  rm "$1.csr"
}
subject="/C=DE/O=Example Corp/OU=Authenticator Attestation/CN=Example Corp fidoseal EA"
leaf attestation "$subject" good
leaf no-ou "/C=DE/O=Example Corp/CN=Example Corp fidoseal EA" good
leaf ca-leaf "$subject" ca
leaf other-aaguid "$subject" other_aaguid
rm leaf.cnf root-ca.srl 2>/dev/null || true
