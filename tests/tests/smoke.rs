use fidoseal_tests::{requests, responses, Device};

#[test]
fn register_then_sign() {
    let mut d = Device::new();
    let cid = d.init();
    let (status, info) = d.ctap(cid, 0x04, None);
    assert_eq!(status, 0);
    assert!(info.is_some());
    let (status, body) = d.ctap(cid, 0x01, Some(requests::make_credential("example.com", b"u1", "alice", vec![])));
    assert_eq!(status, 0);
    let reg = responses::parse_registration(body.as_ref().unwrap());
    let (status, body) = d.ctap(cid, 0x02, Some(requests::get_assertion("example.com", &[&reg.credential_id], vec![])));
    assert_eq!(status, 0);
    let body = body.unwrap();
    let ad = responses::bytes(responses::get(&body, 2));
    let sig = responses::bytes(responses::get(&body, 3));
    assert!(responses::verify(&reg.public_key, &ad, &[0x22; 32], &sig));
}
