//! Who may use the dashboard: the Host it answers for, the secure headers of its
//! pages, the checks of an action (its token, its origin, the authorization).

use super::*;

/// Every request: a host the dashboard answers for, the authorization hook; for changes, actions must be on and
/// the request must come from the dashboard's own pages; every answer gets
/// headers that keep it out of frames and other sites' scripts.
pub(crate) async fn guard(State(s): State<Arc<Inner>>, request: Request, next: Next) -> Response {
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    let access = if reads { Access::Read } else { Access::Act };
    let (parts, body) = request.into_parts();
    let host = requested_host(&parts);
    if !host_allowed(host, &s.allowed_hosts) {
        return refused_host(host);
    }
    let refused = if s
        .authorize
        .as_ref()
        .is_some_and(|allow| !allow(&parts, access))
    {
        Some("not allowed: the dashboard's authorization hook refused this request")
    } else if !reads && !s.actions {
        Some("this dashboard is read-only: its operator turns actions on (`Dashboard::actions(true)`, `jetpack serve --actions`); nothing changed")
    } else if !reads && cross_site(&parts) {
        Some("a request from another site is refused; nothing changed")
    } else {
        None
    };
    let mut response = match refused {
        Some(text) => Failure::Forbidden(text.into()).into_response(),
        None => next.run(Request::from_parts(parts, body)).await,
    };
    secure(response.headers_mut());
    response
}

/// The headers every answer gets: no frames, no other site's scripts.
pub(crate) fn secure(headers: &mut axum::http::HeaderMap) {
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// The host a request names: its `Host` header (HTTP/1.1), or its URI's
/// authority (HTTP/2, a proxy's absolute URI); without its port.
pub(crate) fn requested_host(parts: &Parts) -> Option<&str> {
    let host = match parts.headers.get(header::HOST) {
        Some(host) => host.to_str().ok()?,
        None => parts.uri.authority()?.as_str(),
    };
    let host = host.rsplit('@').next().unwrap_or(host);
    Some(match host.strip_prefix('[') {
        // [::1]:3000
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    })
}

/// Whether the dashboard answers for `host`: an IP address (a page can only
/// make a browser name one by being served from it), `localhost` and its
/// subdomains (which browsers resolve to this machine themselves), and the
/// operator's names ([`Dashboard::allowed_hosts`]). A request that names no
/// host is not answered.
pub(crate) fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(host) = host else {
        return false;
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host.parse::<std::net::IpAddr>().is_ok()
        || host == "localhost"
        || host.ends_with(".localhost")
        || allowed.iter().any(|name| *name == host || name == "*")
}

pub(crate) fn refused_host(host: Option<&str>) -> Response {
    let text = match host {
        Some(host) => format!(
            "this dashboard does not answer for the host {host:?}: only for localhost, IP \
             addresses and the names its operator allows (`Dashboard::allowed_hosts`, \
             `jetpack serve --allowed-host {host}`), so that a page of another site cannot \
             read it through a name pointed at this machine"
        ),
        None => "a request must name its host (the Host header)".to_string(),
    };
    let mut response = Failure::Forbidden(text).into_response();
    secure(response.headers_mut());
    response
}

/// Whether a request comes from a page of another site: its browser says so
/// (`Sec-Fetch-Site`), or its `Origin` is not this host.
pub(crate) fn cross_site(parts: &Parts) -> bool {
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = header(header::HeaderName::from_static("sec-fetch-site")) {
        if site != "same-origin" && site != "none" {
            return true;
        }
    }
    match (header(header::ORIGIN), header(header::HOST)) {
        (Some(origin), Some(host)) => {
            let origin_host = origin.split("://").nth(1).unwrap_or(origin);
            origin_host != host
        }
        (Some(_), None) => true,
        _ => false,
    }
}
