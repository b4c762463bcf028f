//! Archives over frame rings: encoding straight into a claimed frame and validating frames in
//! place. The ring itself carries bytes and knows nothing of this module; these extension
//! traits add the codec to its [`Producer`] and [`Consumer`].
//!
//! ```
//! use erlmcp_flow::codec::ring::{ConsumerExt, ProducerExt};
//! use erlmcp_flow::codec::{jsonrpc, Encoder};
//! use erlmcp_flow::ring::{Ring, RingOptions};
//! let ring = Ring::anonymous("doc-messages", &RingOptions::default()).unwrap();
//! let mut p = ring.producer().unwrap();
//! let mut c = ring.consumer().unwrap();
//! let msg = jsonrpc::from_json(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).unwrap();
//! p.send_message(&mut Encoder::new(), &msg, 256).unwrap();
//! c.poll_messages(1, |m| assert_eq!(m.unwrap().envelopes()[0].method(), Some("ping")))
//!     .unwrap();
//! ```

use super::{ArchivedMessage, Encoder, Message};
use crate::error::{Error, ErrorKind, Result};
use crate::ring::{Consumer, Producer};

/// Writing archives into ring frames in place (no intermediate buffer).
pub trait ProducerExt {
    /// Archives `value` with rkyv straight into a claimed frame (no intermediate buffer) and
    /// commits it; returns the archive's length. Reserves `max_len` bytes; when the archive
    /// is larger, nothing is sent and `TooLarge` comes back. The consumer reads it with
    /// [`ConsumerExt::poll_archived`] for the same `T`. A ring carries one frame type by
    /// convention: the frame does not say which type it holds.
    ///
    /// ```
    /// use erlmcp_flow::codec::ring::{ConsumerExt, ProducerExt};
    /// use erlmcp_flow::ring::{Ring, RingOptions};
    /// #[derive(rkyv::Archive, rkyv::Serialize)]
    /// struct Tick { seq: u64, agent: [u8; 16] }
    /// let ring = Ring::anonymous("doc-typed", &RingOptions::default()).unwrap();
    /// let mut p = ring.producer().unwrap();
    /// let mut c = ring.consumer().unwrap();
    /// p.send_archived(&Tick { seq: 7, agent: *b"agent-0000000001" }, 64).unwrap();
    /// c.poll_archived::<Tick>(1, |t| assert_eq!(t.unwrap().seq, 7)).unwrap();
    /// ```
    fn send_archived<T>(&mut self, value: &T, max_len: usize) -> Result<usize>
    where
        T: for<'a, 'b> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::ser::writer::Buffer<'b>,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Failure,
            >,
        >;

    /// Encodes `msg` in place in the ring (no intermediate buffer) and commits it.
    /// Reserves `max_len` bytes; when the archive is larger, nothing is sent and `TooLarge`
    /// comes back (use a larger `max_len`).
    fn send_message(&mut self, enc: &mut Encoder, msg: &Message, max_len: usize) -> Result<()>;
}

impl ProducerExt for Producer {
    fn send_archived<T>(&mut self, value: &T, max_len: usize) -> Result<usize>
    where
        T: for<'a, 'b> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::ser::writer::Buffer<'b>,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Failure,
            >,
        >,
    {
        let mut claim = self.try_claim(max_len.min(self.ring().max_payload()))?;
        let out = rkyv::ser::writer::Buffer::from(claim.as_mut_slice());
        match rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Failure>(value, out) {
            Ok(written) => {
                let n = written.len();
                claim.commit_len(n);
                Ok(n)
            }
            Err(_) => {
                claim.abort();
                Err(Error::new(
                    ErrorKind::TooLarge,
                    format!("the archive does not fit in {max_len} bytes"),
                ))
            }
        }
    }

    fn send_message(&mut self, enc: &mut Encoder, msg: &Message, max_len: usize) -> Result<()> {
        let mut claim = self.try_claim(max_len.min(self.ring().max_payload()))?;
        match enc.encode_into_slice(msg, claim.as_mut_slice()) {
            Ok(n) => {
                claim.commit_len(n);
                Ok(())
            }
            Err(e) => {
                claim.abort();
                Err(e)
            }
        }
    }
}

/// Reading archives from ring frames in place, validated.
pub trait ConsumerExt {
    /// Like [`Consumer::poll`], but each frame is validated (rkyv bytecheck) as the archive
    /// of a `T` written by [`ProducerExt::send_archived`] and handed over in place; a frame
    /// that fails validation is passed as `Err(Corrupt)` and counted in the ring's
    /// `corrupt_frames`.
    fn poll_archived<T>(
        &mut self,
        limit: usize,
        handler: impl FnMut(Result<&T::Archived>),
    ) -> Result<usize>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> rkyv::bytecheck::CheckBytes<
            rkyv::api::high::HighValidator<'a, rkyv::rancor::Failure>,
        >;

    /// Like [`Consumer::poll`], but each frame is validated as an archived [`Message`] in
    /// place; a frame that fails validation is passed as `Err(Corrupt)` and counted in the
    /// ring's `corrupt_frames`.
    fn poll_messages(
        &mut self,
        limit: usize,
        handler: impl FnMut(Result<&ArchivedMessage>),
    ) -> Result<usize>;
}

impl ConsumerExt for Consumer {
    fn poll_archived<T>(
        &mut self,
        limit: usize,
        mut handler: impl FnMut(Result<&T::Archived>),
    ) -> Result<usize>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> rkyv::bytecheck::CheckBytes<
            rkyv::api::high::HighValidator<'a, rkyv::rancor::Failure>,
        >,
    {
        let sh = self.ring().clone();
        self.poll(limit, |frame| {
            match rkyv::access::<T::Archived, rkyv::rancor::Failure>(frame) {
                Ok(v) => handler(Ok(v)),
                Err(_) => {
                    sh.count_corrupt_frame();
                    handler(Err(Error::corrupt(format!(
                        "a frame of {} bytes is not a valid archive of {}",
                        frame.len(),
                        std::any::type_name::<T>()
                    ))))
                }
            }
        })
    }

    fn poll_messages(
        &mut self,
        limit: usize,
        mut handler: impl FnMut(Result<&ArchivedMessage>),
    ) -> Result<usize> {
        let sh = self.ring().clone();
        self.poll(limit, |frame| {
            let m = super::decode(frame);
            if m.is_err() {
                sh.count_corrupt_frame();
            }
            handler(m)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::jsonrpc;
    use crate::ring::{Ring, RingOptions};
    use crate::testutil::TempDir;

    /// A ring in `dir` (on the heap under Miri, which cannot map files).
    fn ring(dir: &TempDir, cap: usize) -> Ring {
        let opts = RingOptions {
            capacity: cap,
            ..RingOptions::in_dir(&dir.0)
        };
        if cfg!(miri) {
            Ring::anonymous("t", &opts).unwrap()
        } else {
            Ring::create("t", &opts).unwrap()
        }
    }

    #[test]
    fn messages_are_written_and_validated_in_place() {
        let dir = TempDir::new("msg");
        let r = ring(&dir, 1 << 16);
        let mut p = r.producer().unwrap();
        let mut enc = Encoder::new();
        let m = jsonrpc::from_json(
            br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"a":[1,2,3]}}"#,
        )
        .unwrap();
        p.send_message(&mut enc, &m, 1024).unwrap();
        assert_eq!(
            p.send_message(&mut enc, &m, 16).unwrap_err().kind(),
            ErrorKind::TooLarge
        );
        p.send(b"not an archive").unwrap();
        let mut c = r.consumer().unwrap();
        let mut results = Vec::new();
        c.poll_messages(usize::MAX, |res| {
            results.push(res.map(|m| m.envelopes()[0].method().map(str::to_owned)))
        })
        .unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].as_ref().unwrap().as_deref(), Some("tools/call"));
        assert_eq!(results[1].as_ref().unwrap_err().kind(), ErrorKind::Corrupt);
        assert_eq!(r.stats().corrupt_frames, 1);
    }

    #[derive(rkyv::Archive, rkyv::Serialize, Debug, PartialEq)]
    struct Tick {
        seq: u64,
        agent: [u8; 16],
        tag: Option<u32>,
    }

    #[test]
    fn typed_frames_round_trip_validated_in_place() {
        let d = TempDir::new("typed");
        let r = ring(&d, 1 << 14);
        let mut p = r.producer().unwrap();
        let mut c = r.consumer().unwrap();
        let mut next = 0u64;
        let mut check = |c: &mut Consumer| {
            c.poll_archived::<Tick>(usize::MAX, |t| {
                let t = t.unwrap();
                assert_eq!(t.seq, next);
                assert_eq!(t.agent, [next as u8; 16]);
                assert_eq!(
                    t.tag.as_ref().map(|v| v.to_native()),
                    (next % 3 == 0).then_some(next as u32)
                );
                next += 1;
            })
            .unwrap()
        };
        let mut full = 0;
        for seq in 0..3000u64 {
            let t = Tick {
                seq,
                agent: [seq as u8; 16],
                tag: (seq % 3 == 0).then_some(seq as u32),
            };
            // On back-pressure, drain and send the same value again: nothing is lost.
            loop {
                match p.send_archived(&t, 64) {
                    Ok(n) => {
                        assert!(n <= 64);
                        break;
                    }
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::Full);
                        full += 1;
                        assert!(check(&mut c) > 0);
                    }
                }
            }
        }
        while check(&mut c) > 0 {}
        assert!(
            full > 0,
            "the ring never filled: the test did not exercise back-pressure"
        );
        let next = next;
        assert_eq!(next, 3000);
    }

    #[test]
    fn typed_frames_refuse_what_does_not_fit_and_flag_what_is_not_an_archive() {
        let d = TempDir::new("typed-bad");
        let r = ring(&d, 1 << 14);
        let mut p = r.producer().unwrap();
        let mut c = r.consumer().unwrap();
        let t = Tick {
            seq: 1,
            agent: [1; 16],
            tag: None,
        };
        // Too small a reservation: TooLarge, and nothing was delivered.
        assert_eq!(
            p.send_archived(&t, 8).unwrap_err().kind(),
            ErrorKind::TooLarge
        );
        assert_eq!(
            c.poll(usize::MAX, |_| panic!("nothing was sent")).unwrap(),
            0
        );
        // A frame too short to hold a Tick is reported as corrupt and counted, not read.
        p.send(&[1, 2, 3]).unwrap();
        // An `Option` tag other than 0/1 fails bytecheck.
        let n = p.send_archived(&t, 64).unwrap();
        let mut bytes = vec![0u8; n];
        let mut errors = 0;
        let mut ok = 0;
        c.poll_archived::<Tick>(usize::MAX, |t| match t {
            Ok(v) => {
                assert_eq!(v.seq, 1);
                ok += 1
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Corrupt);
                errors += 1
            }
        })
        .unwrap();
        assert_eq!((errors, ok), (1, 1));
        assert_eq!(r.stats().corrupt_frames, 1);
        // Corrupt the discriminant of the Option in a copy and check validation refuses it.
        bytes.fill(0xFF);
        p.send(&bytes).unwrap();
        let mut seen = None;
        c.poll_archived::<Tick>(1, |t| seen = Some(t.map(|_| ()).map_err(|e| e.kind())))
            .unwrap();
        assert_eq!(seen, Some(Err(ErrorKind::Corrupt)));
    }
}
