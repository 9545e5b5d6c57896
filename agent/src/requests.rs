//! The open dialogs, by request id, so that `Cancel(request)` can close
//! them.
//!
//! A dialog is either *active* (a method call waits for the user's answer)
//! or *lingering* (after the call returned: "touch the fingerprint
//! sensor"). A new call for the same request, or Cancel, closes the
//! lingering ones.
//!
//! A failure message (ShowFailure) is a *notice*, not tied to the request's
//! life: fidoseald sends ShowFailure and then Cancel when a finger does not
//! match, and the browser retries with a new request. The newest notice is
//! shown inline by the next dialog of any request (SETERROR, or above the
//! question), or, if no dialog comes soon, in a window of its own that the
//! next dialog closes.
//!
//! zbus runs each incoming call in its own task, so a Cancel may be handled
//! before the call it cancels has opened its dialog. Calls from one
//! connection carry increasing serial numbers: a Cancel applies to every
//! call of that request with a lower serial, whether its dialog is open yet
//! or not, and never to a later call that reuses the request id.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How many Cancels are remembered for calls that have not started yet.
const CANCEL_MARKS: usize = 32;
/// A notice older than this is not shown by a later dialog.
const NOTICE_MAX_AGE: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Requests {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<u64, Slot>,
    cancels: VecDeque<CancelMark>,
    notice: Option<Notice>,
    next_id: u64,
}

struct Notice {
    token: u64,
    text: String,
    at: Instant,
    /// Closes the notice's own window, once it has one.
    window: Option<watch::Sender<bool>>,
}

struct CancelMark {
    request: u64,
    sender: String,
    serial: u32,
}

#[derive(Default)]
struct Slot {
    dialogs: Vec<Entry>,
}

struct Entry {
    id: u64,
    serial: u32,
    linger: bool,
    closer: watch::Sender<bool>,
}

/// A dialog's place in the table; leaving it (drop) removes the entry.
pub struct Ticket {
    requests: Arc<Requests>,
    pub request: u64,
    id: u64,
    pub closer: watch::Receiver<bool>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.requests.lock();
        if let Some(slot) = inner.slots.get_mut(&self.request) {
            slot.dialogs.retain(|e| e.id != self.id);
            if slot.dialogs.is_empty() {
                inner.slots.remove(&self.request);
            }
        }
    }
}

/// The window of a notice; dropping it forgets the notice (it was seen,
/// timed out, or was handed to a dialog).
pub struct NoticeWindow {
    requests: Arc<Requests>,
    token: u64,
    pub closer: watch::Receiver<bool>,
}

impl Drop for NoticeWindow {
    fn drop(&mut self) {
        let mut inner = self.requests.lock();
        if inner.notice.as_ref().is_some_and(|n| n.token == self.token) {
            inner.notice = None;
        }
    }
}

/// The call was cancelled before it could open its dialog.
#[derive(Debug)]
pub struct AlreadyCancelled;

impl Requests {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(self: &Arc<Self>, inner: &mut Inner, request: u64, serial: u32, linger: bool) -> Ticket {
        inner.next_id += 1;
        let id = inner.next_id;
        let (closer, rx) = watch::channel(false);
        inner.slots.entry(request).or_default().dialogs.push(Entry { id, serial, linger, closer });
        Ticket { requests: self.clone(), request, id, closer: rx }
    }

    /// A call (serial `serial` from `sender`) starts a dialog for `request`.
    /// Closes the request's lingering dialogs, and takes the pending
    /// notice, if any, for the new dialog to show.
    pub fn begin(
        self: &Arc<Self>,
        request: u64,
        sender: &str,
        serial: u32,
    ) -> Result<(Ticket, Option<String>), AlreadyCancelled> {
        let mut inner = self.lock();
        if inner.cancels.iter().any(|m| m.request == request && m.sender == sender && m.serial > serial) {
            return Err(AlreadyCancelled);
        }
        if let Some(slot) = inner.slots.get(&request) {
            for e in slot.dialogs.iter().filter(|e| e.linger && e.serial < serial) {
                e.closer.send_replace(true);
            }
        }
        let notice = inner.notice.take().and_then(|n| {
            if let Some(window) = &n.window {
                window.send_replace(true);
            }
            (n.at.elapsed() < NOTICE_MAX_AGE).then_some(n.text)
        });
        let ticket = self.add(&mut inner, request, serial, false);
        Ok((ticket, notice))
    }

    /// Marks a dialog as lingering: its call has returned.
    pub fn set_linger(&self, ticket: &Ticket) {
        let mut inner = self.lock();
        if let Some(e) =
            inner.slots.get_mut(&ticket.request).and_then(|s| s.dialogs.iter_mut().find(|e| e.id == ticket.id))
        {
            e.linger = true;
        }
    }

    /// Cancel(request) from `sender` with serial `serial`: closes the
    /// request's dialogs opened by earlier calls, and remembers the Cancel
    /// for earlier calls still on their way. Returns how many it closed.
    pub fn cancel(&self, request: u64, sender: &str, serial: u32) -> usize {
        let mut inner = self.lock();
        let mut closed = 0;
        if let Some(slot) = inner.slots.get_mut(&request) {
            for e in slot.dialogs.iter().filter(|e| e.serial < serial) {
                if !e.closer.send_replace(true) {
                    closed += 1;
                }
            }
            if slot.dialogs.is_empty() {
                inner.slots.remove(&request);
            }
        }
        if inner.cancels.len() == CANCEL_MARKS {
            inner.cancels.pop_front();
        }
        inner.cancels.push_back(CancelMark { request, sender: sender.to_owned(), serial });
        closed
    }

    /// ShowFailure: closes the request's lingering dialogs (they are out of
    /// date) and makes `text` the notice, replacing an older one. Returns
    /// a token for `notice_window`.
    pub fn show_failure(&self, request: u64, serial: u32, text: String) -> u64 {
        let mut inner = self.lock();
        inner.next_id += 1;
        let token = inner.next_id;
        if let Some(slot) = inner.slots.get(&request) {
            for e in slot.dialogs.iter().filter(|e| e.linger && e.serial < serial) {
                e.closer.send_replace(true);
            }
        }
        if let Some(old) = inner.notice.take() {
            if let Some(window) = old.window {
                window.send_replace(true);
            }
        }
        inner.notice = Some(Notice { token, text, at: Instant::now(), window: None });
        token
    }

    /// The notice `token`, to be shown in its own window, unless a dialog
    /// took it or a newer notice replaced it.
    pub fn notice_window(self: &Arc<Self>, token: u64) -> Option<(String, NoticeWindow)> {
        let mut inner = self.lock();
        let notice = inner.notice.as_mut().filter(|n| n.token == token && n.window.is_none())?;
        let (closer, rx) = watch::channel(false);
        notice.window = Some(closer);
        let text = notice.text.clone();
        Some((text, NoticeWindow { requests: self.clone(), token, closer: rx }))
    }

    /// The daemon left the bus (or the agent stops): close everything and
    /// forget what belonged to that daemon.
    pub fn close_all(&self) -> usize {
        let mut inner = self.lock();
        let mut closed = 0;
        if let Some(window) = inner.notice.take().and_then(|n| n.window) {
            if !window.send_replace(true) {
                closed += 1;
            }
        }
        for slot in inner.slots.values_mut() {
            for e in &slot.dialogs {
                if !e.closer.send_replace(true) {
                    closed += 1;
                }
            }
        }
        inner.slots.retain(|_, s| !s.dialogs.is_empty());
        inner.cancels.clear();
        closed
    }

    #[cfg(test)]
    fn slots(&self) -> usize {
        self.lock().slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_closes_earlier_calls_only() {
        let r = Arc::new(Requests::default());
        let (t, _) = r.begin(7, ":1.5", 10).unwrap();
        assert_eq!(r.cancel(7, ":1.5", 12), 1);
        assert!(*t.closer.borrow());
        // A call sent before the Cancel but handled after it: refused.
        assert!(r.begin(7, ":1.5", 11).is_err());
        // A later call reusing the id: fine; another daemon's: fine.
        let (t2, _) = r.begin(7, ":1.5", 13).unwrap();
        assert!(!*t2.closer.borrow());
        assert!(r.begin(7, ":1.9", 3).is_ok());
        drop((t, t2));
        r.close_all();
        assert!(r.begin(7, ":1.5", 11).is_ok(), "marks go with the daemon");
    }

    #[test]
    fn new_call_closes_lingering_dialogs_of_its_request() {
        let r = Arc::new(Requests::default());
        let (fp, _) = r.begin(1, ":1.5", 1).unwrap();
        r.set_linger(&fp);
        let (other, _) = r.begin(2, ":1.5", 2).unwrap();
        assert!(!*fp.closer.borrow(), "another request leaves it alone");
        let (next, _) = r.begin(1, ":1.5", 3).unwrap();
        assert!(*fp.closer.borrow());
        assert!(!*other.closer.borrow());
        drop((fp, other, next));
        assert_eq!(r.slots(), 0);
    }

    #[test]
    fn a_failure_survives_cancel_and_goes_to_the_next_dialog() {
        let r = Arc::new(Requests::default());
        let (fp, _) = r.begin(1, ":1.5", 1).unwrap();
        r.set_linger(&fp);
        let token = r.show_failure(1, 2, "No match".into());
        assert!(*fp.closer.borrow(), "the failure closes the fingerprint prompt");
        r.cancel(1, ":1.5", 3);
        // The browser retries: a new request shows the failure inline.
        let (_retry, notice) = r.begin(2, ":1.5", 4).unwrap();
        assert_eq!(notice.as_deref(), Some("No match"));
        assert!(r.notice_window(token).is_none(), "taken by the dialog");
    }

    #[test]
    fn a_failure_gets_a_window_that_the_next_dialog_closes() {
        let r = Arc::new(Requests::default());
        let token = r.show_failure(4, 1, "Wrong password".into());
        let (text, window) = r.notice_window(token).unwrap();
        assert_eq!(text, "Wrong password");
        assert!(r.notice_window(token).is_none(), "one window per notice");
        let (_next, notice) = r.begin(5, ":1.5", 2).unwrap();
        assert_eq!(notice.as_deref(), Some("Wrong password"));
        assert!(*window.closer.borrow());
        drop(window);

        // Dismissed: forgotten.
        let token = r.show_failure(6, 3, "Again".into());
        drop(r.notice_window(token).unwrap());
        assert_eq!(r.begin(7, ":1.5", 4).unwrap().1, None);

        // A newer failure replaces the older one and closes its window.
        let t1 = r.show_failure(8, 5, "first".into());
        let (_, w1) = r.notice_window(t1).unwrap();
        let t2 = r.show_failure(8, 6, "second".into());
        assert!(*w1.closer.borrow());
        drop(w1);
        let (text, w2) = r.notice_window(t2).unwrap();
        assert_eq!(text, "second");
        assert_eq!(r.close_all(), 2, "the window and the dialog of request 5");
        assert!(*w2.closer.borrow());
    }
}
