//! The sync channel between the runtime (parent) and `cryo init`: a socketpair carrying
//! length-prefixed JSON messages. The init's end is close-on-exec at the final execve, so the
//! parent reads EOF exactly when the user's process has replaced the init.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// Bound on one message, to refuse garbage rather than allocate it.
const MAX_MSG: usize = 64 << 20;

/// One end of the channel.
#[derive(Debug)]
pub struct Channel {
    sock: UnixStream,
}

impl Channel {
    /// A connected pair: (parent end, child end). Both close-on-exec; the spawner clears the
    /// flag on the child end for the init.
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = UnixStream::pair().map_err(|e| Error::Other(format!("socketpair: {e}")))?;
        Ok((Channel { sock: a }, Channel { sock: b }))
    }

    /// Adopts an inherited fd.
    ///
    /// # Safety
    /// `fd` must be an open socket owned by nobody else.
    pub unsafe fn from_raw_fd(fd: RawFd) -> Channel {
        Channel {
            // SAFETY: guaranteed by the caller.
            sock: unsafe { UnixStream::from_raw_fd(fd) },
        }
    }

    /// The raw fd (to pass to a child).
    pub fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Into an owned fd.
    pub fn into_fd(self) -> OwnedFd {
        self.sock.into()
    }

    /// Sends one message.
    pub fn send<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        let body = serde_json::to_vec(msg)
            .map_err(|e| Error::Other(format!("encoding sync message: {e}")))?;
        let len =
            u32::try_from(body.len()).map_err(|_| Error::Other("sync message too large".into()))?;
        let mut buf = Vec::with_capacity(body.len() + 4);
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&body);
        self.sock
            .write_all(&buf)
            .map_err(|e| Error::Other(format!("sync channel write: {e}")))
    }

    /// Receives one message; `Ok(None)` on EOF.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        let mut len = [0u8; 4];
        match self.sock.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(Error::Other(format!("sync channel read: {e}"))),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_MSG {
            return Err(Error::Other(format!("sync message of {len} bytes refused")));
        }
        let mut body = vec![0u8; len];
        self.sock
            .read_exact(&mut body)
            .map_err(|e| Error::Other(format!("sync channel read: {e}")))?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| Error::Other(format!("decoding sync message: {e}")))
    }
}
