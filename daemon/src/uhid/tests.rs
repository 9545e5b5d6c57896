use super::*;
use std::time::Duration;

fn info() -> DeviceInfo {
    DeviceInfo {
        name: "fidoseal virtual key".into(),
        phys: "fidoseal/0".into(),
        uniq: "0123456789abcdef".into(),
        vendor: 0x1209,
        product: 0xf1d0,
        version: 0x0102,
    }
}

/// What the kernel sends for an output report of `data.len()` bytes.
fn output_event(data: &[u8]) -> EventBuf {
    let mut ev = new_event(UHID_OUTPUT);
    put(&mut ev, 4, data);
    put(&mut ev, 4100, &(data.len() as u16).to_ne_bytes());
    ev[4102] = 1; // rtype UHID_OUTPUT_REPORT
    ev
}

/// GET_REPORT / SET_REPORT with rnum 3, rtype 0 (UHID_FEATURE_REPORT).
fn report_request(event_type: u32, id: u32) -> EventBuf {
    let mut ev = new_event(event_type);
    put(&mut ev, 4, &id.to_ne_bytes());
    ev[8] = 3;
    ev
}

/// (type, id, err) of a report reply.
fn reply(ev: &[u8]) -> (u32, u32, u16) {
    (u32_at(ev, 0), u32_at(ev, 4), u16_at(ev, 8))
}

fn zero(b: &[u8]) -> bool {
    b.iter().all(|&b| b == 0)
}

#[test]
fn create2_layout() {
    let ev = &encode_create2(&info()).unwrap()[..];
    assert_eq!(u32_at(ev, 0), 11);
    assert_eq!(&ev[4..24], b"fidoseal virtual key");
    assert_eq!(&ev[132..142], b"fidoseal/0");
    assert_eq!(&ev[196..212], b"0123456789abcdef");
    assert!(zero(&ev[24..132]) && zero(&ev[142..196]) && zero(&ev[212..260]));
    assert_eq!((u16_at(ev, 260), u16_at(ev, 262)), (34, 0x03));
    assert_eq!((u32_at(ev, 264), u32_at(ev, 268)), (0x1209, 0xf1d0));
    assert_eq!((u32_at(ev, 272), u32_at(ev, 276)), (0x0102, 0));
    assert_eq!(&ev[280..314], &FIDO_REPORT_DESCRIPTOR);
    assert_eq!(&ev[280..284], &[0x06, 0xD0, 0xF1, 0x09]);
    assert!(zero(&ev[314..]));
}

#[test]
fn input2_destroy_and_reply_layout() {
    let report: [u8; 64] = std::array::from_fn(|i| i as u8 + 1);
    let ev = &encode_input2(&report)[..];
    assert_eq!((u32_at(ev, 0), u16_at(ev, 4)), (12, 64));
    assert!(ev[6..70] == report && zero(&ev[70..]));
    let ev = &encode_destroy()[..];
    assert!(u32_at(ev, 0) == 1 && zero(&ev[4..]));
    let ev = &encode_get_report_reply(0xdead_beef, 5)[..];
    assert_eq!((reply(ev), u16_at(ev, 10)), ((10, 0xdead_beef, 5), 0));
    assert_eq!(reply(&encode_set_report_reply(7, 5)[..]), (14, 7, 5));
}

#[test]
fn decode_output_round_trip_and_report_id_strip() {
    let report: [u8; 64] = std::array::from_fn(|i| 0xff - i as u8);
    let want = Decoded::Event(UhidEvent::Output(report));
    assert_eq!(decode_event(&output_event(&report)[..]).unwrap(), want);
    let mut with_id = [0u8; 65];
    with_id[1..].copy_from_slice(&report);
    assert_eq!(decode_event(&output_event(&with_id)[..]).unwrap(), want);
    with_id[0] = 2; // 65 bytes with a non-zero report id, or any other size: malformed
    let other_sizes = [&report[..10], &[][..], &[0u8; 66][..], &[0u8; 4096][..]];
    for data in other_sizes.into_iter().chain([&with_id[..]]) {
        let want = Decoded::Event(UhidEvent::MalformedOutput { size: data.len() });
        assert_eq!(decode_event(&output_event(data)[..]).unwrap(), want);
    }
    let mut ev = output_event(&report);
    put(&mut ev, 4100, &5000u16.to_ne_bytes());
    let want = Decoded::Event(UhidEvent::MalformedOutput { size: 5000 });
    assert_eq!(decode_event(&ev[..]).unwrap(), want);
}

#[test]
fn decode_simple_and_report_requests() {
    use UhidEvent::*;
    for (t, want) in [(2u32, Start), (3, Stop), (4, Open), (5, Close), (99, Other(99))] {
        assert_eq!(decode_event(&t.to_ne_bytes()).unwrap(), Decoded::Event(want));
    }
    let (id, rnum, rtype) = (42, 3, 0);
    let get = decode_event(&report_request(9, 42)[..]).unwrap();
    assert_eq!(get, Decoded::GetReport { id, rnum, rtype });
    let set = decode_event(&report_request(13, 42)[..10]).unwrap();
    assert_eq!(set, Decoded::SetReport { id, rnum, rtype });
}

#[test]
fn short_and_truncated_events_are_errors() {
    for len in 0..4 {
        let res = decode_event(&[6, 0, 0, 0][..len]);
        assert!(matches!(res, Err(UhidError::ShortEvent(l)) if l == len));
    }
    let out = output_event(&[0; 64]);
    let (get, set) = (report_request(9, 1), report_request(13, 1));
    for (ev, needed) in [(&out, 4102), (&get, 10), (&set, 10)] {
        for len in 4..=EVENT_SIZE {
            let res = decode_event(&ev[..len]);
            assert_eq!(res.is_err(), len < needed, "type {} len {len}", ev[0]);
        }
    }
    let err = decode_event(&out[..100]).unwrap_err();
    assert!(err.is_recoverable());
    let want = "uhid event type 6 truncated: 100 bytes, need 4102";
    assert_eq!(err.to_string(), want);
}

#[test]
fn invalid_strings_rejected() {
    let (name, phys, uniq) = ("n".repeat(127), "p".repeat(63), "u".repeat(63));
    assert!(encode_create2(&DeviceInfo { name, phys, uniq, ..info() }).is_ok());
    let bad: [fn(&mut DeviceInfo); 8] = [
        |i| i.name = "n".repeat(128),
        |i| i.name = "n".repeat(1000),
        |i| i.phys = "p".repeat(64),
        |i| i.uniq = "u".repeat(64),
        |i| i.name = "key\n".into(),
        |i| i.name = "cl\u{e9}".into(),
        |i| i.phys = "a\0b".into(),
        |i| i.uniq = "\u{7f}".into(),
    ];
    for spoil in bad {
        let mut info = info();
        spoil(&mut info);
        let res = encode_create2(&info);
        assert!(matches!(res, Err(UhidError::InvalidDeviceInfo(_))), "{info:?}");
    }
}

#[test]
fn errors_instead_of_panics_outside_runtime_or_on_bad_path() {
    let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let res = UhidDevice::create_on(a.into(), &info());
    assert!(matches!(res, Err(UhidError::NoRuntime)));
    let res = UhidDevice::create(Path::new("/nonexistent/uhid"), &info());
    assert!(matches!(res, Err(UhidError::Open { .. })));
}

#[tokio::test]
async fn device_over_datagram_pair() {
    let (dev_end, peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
    dev_end.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let peer = &tokio::net::UnixDatagram::from_std(peer).unwrap();
    let dev = UhidDevice::create_on(dev_end.into(), &info()).unwrap();
    let secs = Duration::from_secs(5);
    let mut buf = vec![0u8; EVENT_SIZE + 16];
    macro_rules! recv {
        () => {{
            let n = tokio::time::timeout(secs, peer.recv(&mut buf)).await;
            &buf[..n.unwrap().unwrap()]
        }};
    }
    let read_event = || tokio::time::timeout(secs, dev.read_event());
    let send = |ev: EventBuf| async move { peer.send(&ev[..]).await.unwrap() };

    assert_eq!(recv!(), &encode_create2(&info()).unwrap()[..]);

    let mut with_id = [0x5a; 65];
    with_id[0] = 0;
    send(output_event(&with_id)).await;
    assert_eq!(read_event().await.unwrap().unwrap(), UhidEvent::Output([0x5a; 64]));

    // Report requests are answered with EIO inside read_event, which keeps reading.
    send(report_request(UHID_GET_REPORT, 42)).await;
    send(report_request(UHID_SET_REPORT, 43)).await;
    send(new_event(UHID_OPEN)).await;
    assert_eq!(read_event().await.unwrap().unwrap(), UhidEvent::Open);
    assert_eq!(reply(recv!()), (UHID_GET_REPORT_REPLY, 42, 5));
    assert_eq!(reply(recv!()), (UHID_SET_REPORT_REPLY, 43, 5));

    // A truncated event is a recoverable error; the next one reads fine.
    peer.send(&output_event(&[0; 64])[..50]).await.unwrap();
    peer.send(&UHID_CLOSE.to_ne_bytes()).await.unwrap();
    assert!(read_event().await.unwrap().unwrap_err().is_recoverable());
    assert_eq!(read_event().await.unwrap().unwrap(), UhidEvent::Close);

    dev.send_input(&[0x11; 64]).await.unwrap();
    assert_eq!(recv!(), &encode_input2(&[0x11; 64])[..]);
    dev.destroy().unwrap();
    assert_eq!(recv!(), &encode_destroy()[..]);
}
