//! Why a connection failed, told from its error chain, and the one
//! sentence an operator can act on.

use std::io;

/// Why a connection failed, as far as its error chain tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    Expired,
    /// The server refused our certificate: not from its CA.
    UnknownCa,
    /// We refused the server's certificate: not signed by our CA (another
    /// CA of another name, or of the same name, as a second `certs init`
    /// makes, whose signature does not verify).
    PeerNotFromOurCa,
    NoClientCertificate,
    WrongRole,
    CertificateRefused,
    WrongName,
    /// Reset during the handshake: most likely a refusal by a server that
    /// sends no alert, but a server going away looks the same.
    ClosedInHandshake,
    /// Closed right after the handshake without a word: the server read
    /// our certificate and hung up.
    RefusedAfterHandshake,
    NothingListening,
    TimedOut,
    Other,
}

impl ConnectFailure {
    /// Reads an error chain (see `error_chain`); TLS refusals are recognised
    /// by their alerts.
    pub fn of(chain: &str) -> Self {
        let has = |needle: &str| chain.contains(needle);
        let peer_refused = has("invalid peer certificate");
        if has("CertificateExpired") || has("certificate expired") || has("Expired") {
            ConnectFailure::Expired
        } else if peer_refused && (has("UnknownIssuer") || has("BadSignature")) {
            ConnectFailure::PeerNotFromOurCa
        } else if has("UnknownCA") || has("UnknownIssuer") {
            ConnectFailure::UnknownCa
        } else if has("CertificateRequired") {
            ConnectFailure::NoClientCertificate
        } else if has("has role") {
            ConnectFailure::WrongRole
        } else if has("BadCertificate") || has("invalid peer certificate") {
            ConnectFailure::CertificateRefused
        } else if has("NotValidForName") || has("CertNotValidForName") {
            ConnectFailure::WrongName
        } else if has("refused our certificate") {
            ConnectFailure::RefusedAfterHandshake
        } else if has("broken pipe") || has("Connection reset") || has("connection reset") {
            ConnectFailure::ClosedInHandshake
        } else if has("Connection refused") || has("ConnectionRefused") {
            ConnectFailure::NothingListening
        } else if has("timed out") || has("deadline has elapsed") {
            ConnectFailure::TimedOut
        } else {
            ConnectFailure::Other
        }
    }

    /// A certificate (ours or the server's) was certainly refused: asking
    /// again cannot help, unlike a server that is down or restarting.
    pub fn is_refusal(self) -> bool {
        !matches!(
            self,
            ConnectFailure::ClosedInHandshake
                | ConnectFailure::NothingListening
                | ConnectFailure::TimedOut
                | ConnectFailure::Other
        )
    }
}

/// Turns a failed call's error chain into one sentence an operator can act
/// on, naming the peer.
pub fn explain_connect_error(peer: &str, error: &(dyn std::error::Error + 'static)) -> String {
    let chain = error_chain(error);
    match ConnectFailure::of(&chain) {
        ConnectFailure::Expired => format!(
            "{peer} refused the TLS handshake: a certificate has expired (ours, or the server's); issue a new one with `fleetctl certs issue` ({chain})"
        ),
        ConnectFailure::UnknownCa => format!(
            "{peer} refused the TLS handshake: the certificates are not signed by the same fleet CA; check --ca and --cert ({chain})"
        ),
        ConnectFailure::PeerNotFromOurCa => format!(
            // The sentence says it all; rustls's `BadSignature` says less.
            "{peer} presented a certificate not signed by the fleet CA given with --ca: it belongs to another fleet (or the CA was made again); point --ca at the CA that issued its certificate, or issue it a new one from this CA"
        ),
        ConnectFailure::NoClientCertificate => {
            format!("{peer} requires a client certificate and none was presented ({chain})")
        }
        ConnectFailure::WrongRole => format!("{peer} is not the kind of server expected: {chain}"),
        ConnectFailure::CertificateRefused => {
            format!("{peer} refused the TLS handshake: certificate not accepted ({chain})")
        }
        ConnectFailure::WrongName => format!(
            "{peer} presented a certificate that does not name this address; issue it with --san for the address used ({chain})"
        ),
        ConnectFailure::ClosedInHandshake => format!(
            "{peer} closed the connection during the TLS handshake: it most likely refused our certificate (expired, or not from its CA); its log says why ({chain})"
        ),
        ConnectFailure::NothingListening => {
            format!("nothing is listening at {peer} (connection refused)")
        }
        ConnectFailure::TimedOut => format!("{peer} did not answer in time ({chain})"),
        ConnectFailure::RefusedAfterHandshake | ConnectFailure::Other => {
            format!("{peer}: {chain}")
        }
    }
}

/// Every message of an error chain, including errors hidden inside
/// `io::Error` (whose `source()` skips its own inner error).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
        {
            let text = format!("{inner:?}");
            if !parts.iter().any(|p| p.contains(&text)) {
                parts.push(text);
            }
        }
        current = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_refused_whom_is_told_apart() {
        let theirs = "transport error: invalid peer certificate: BadSignature";
        assert_eq!(ConnectFailure::of(theirs), ConnectFailure::PeerNotFromOurCa);
        assert_eq!(
            ConnectFailure::of("invalid peer certificate: UnknownIssuer"),
            ConnectFailure::PeerNotFromOurCa
        );
        assert_eq!(
            ConnectFailure::of("received fatal alert: UnknownCA"),
            ConnectFailure::UnknownCa
        );
        assert!(ConnectFailure::PeerNotFromOurCa.is_refusal());
    }
}
