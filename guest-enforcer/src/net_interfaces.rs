//! The egress funnel's interfaces, set up over rtnetlink in the current network
//! namespace.
//!
//! Everything happens on `lo`: it is brought up, given [`FUNNEL_LOCAL_ADDR`] inside
//! [`SYNTHETIC_NET`] (the range the stub DNS hands out), and made the target of a
//! default IPv4 route. With that route a `connect` to *any* IPv4 address reaches the
//! netfilter output hook (where [`crate::netfilter`] redirects it to the forwarder)
//! instead of failing with `ENETUNREACH` before the rules ever see it.
//!
//! No other interface is created. A `dummy` device was tried first, but the host
//! kernel may lack the module and a user namespace cannot load one; `lo` exists in
//! every network namespace, so the same code serves the VM and process mode.

use std::net::Ipv4Addr;

use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use tokio_stream::StreamExt;

/// The synthetic range the stub DNS answers from (198.18.0.0/15, RFC 2544 benchmarking
/// space, never routed on the internet), as (network, prefix length).
pub const SYNTHETIC_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);

/// The funnel's own address on `lo`, inside [`SYNTHETIC_NET`]; it is the source
/// address of every redirected connection.
pub const FUNNEL_LOCAL_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

const LOOPBACK: &str = "lo";

/// The addresses to configure; [`Default`] gives [`FUNNEL_LOCAL_ADDR`] in
/// [`SYNTHETIC_NET`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunnelAddresses {
    /// Added to `lo` with the prefix length of `synthetic_net`.
    pub local_addr: Ipv4Addr,
    /// (network, prefix length); `local_addr` must lie inside it.
    pub synthetic_net: (Ipv4Addr, u8),
}

impl Default for FunnelAddresses {
    fn default() -> Self {
        FunnelAddresses {
            local_addr: FUNNEL_LOCAL_ADDR,
            synthetic_net: SYNTHETIC_NET,
        }
    }
}

/// What was configured, for the enforcer's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunnelInterfaces {
    /// Interface index of `lo` (the funnel's only interface).
    pub loopback_index: u32,
    /// The address added to `lo`.
    pub local_addr: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
}

/// Why an rtnetlink request failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkFailure {
    /// The kernel answered with an error.
    #[error("the kernel refused it: {0}")]
    Kernel(nix::errno::Errno),
    /// Anything else (socket gone, unexpected answer).
    #[error(transparent)]
    Other(rtnetlink::Error),
}

impl From<rtnetlink::Error> for NetlinkFailure {
    fn from(error: rtnetlink::Error) -> Self {
        match error {
            rtnetlink::Error::NetlinkError(ref message) if message.code.is_some() => {
                NetlinkFailure::Kernel(nix::errno::Errno::from_raw(-message.raw_code()))
            }
            other => NetlinkFailure::Other(other),
        }
    }
}

/// Setting up the funnel's interfaces failed.
#[derive(Debug, thiserror::Error)]
pub enum NetInterfaceError {
    /// The address does not fit the range (a caller bug, caught before any change).
    #[error(
        "funnel address {addr} is not inside the synthetic range {}/{}",
        .net.0, .net.1
    )]
    AddressOutsideRange {
        /// The requested local address.
        addr: Ipv4Addr,
        /// The requested range.
        net: (Ipv4Addr, u8),
    },
    /// The private tokio runtime could not be built.
    #[error("building the runtime for rtnetlink: {0}")]
    Runtime(#[source] std::io::Error),
    /// No rtnetlink socket.
    #[error("opening an rtnetlink socket: {0}")]
    Connection(#[source] std::io::Error),
    /// Looking up `lo` failed.
    #[error("looking up interface {LOOPBACK}: {0}")]
    LookUpLoopback(#[source] NetlinkFailure),
    /// `lo` does not exist (cannot happen in a Linux network namespace).
    #[error("interface {LOOPBACK} does not exist in this network namespace")]
    NoLoopback,
    /// `ip link set lo up` failed.
    #[error("setting interface {LOOPBACK} up: {0}")]
    LinkUp(#[source] NetlinkFailure),
    /// `ip addr add` failed.
    #[error("adding address {addr}/{prefix_len} to {LOOPBACK}: {source}")]
    AddAddress {
        /// The address.
        addr: Ipv4Addr,
        /// Its prefix length.
        prefix_len: u8,
        /// Why.
        #[source]
        source: NetlinkFailure,
    },
    /// `ip route add default dev lo` failed.
    #[error("adding the default IPv4 route via dev {LOOPBACK}: {0}")]
    AddDefaultRoute(#[source] NetlinkFailure),
}

/// Brings `lo` up, adds `funnel.local_addr` with the synthetic prefix to it, and routes
/// all IPv4 traffic via `lo` (`ip link set lo up; ip addr add 198.18.0.1/15 dev lo;
/// ip route add default dev lo`), in the calling thread's network namespace.
///
/// Idempotent: the address and the route are added with replace semantics. Needs
/// `CAP_NET_ADMIN` over the namespace. Runs its own single-threaded tokio runtime, so
/// the caller needs none (and must not be inside one).
pub fn bring_up_funnel_interfaces_in_current_netns(
    funnel: &FunnelAddresses,
) -> Result<FunnelInterfaces, NetInterfaceError> {
    let (net, prefix_len) = funnel.synthetic_net;
    if !contains(funnel.synthetic_net, funnel.local_addr) {
        return Err(NetInterfaceError::AddressOutsideRange {
            addr: funnel.local_addr,
            net: (net, prefix_len),
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(NetInterfaceError::Runtime)?;
    runtime.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(NetInterfaceError::Connection)?;
        // The connection task drives the socket; it ends when `handle` is dropped.
        let driver = tokio::spawn(connection);
        let result = configure(&handle, funnel.local_addr, prefix_len).await;
        drop(handle);
        driver.abort();
        result
    })
}

async fn configure(
    handle: &Handle,
    local_addr: Ipv4Addr,
    prefix_len: u8,
) -> Result<FunnelInterfaces, NetInterfaceError> {
    let loopback_index = loopback_index(handle).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(loopback_index).up().build())
        .execute()
        .await
        .map_err(|e| NetInterfaceError::LinkUp(e.into()))?;
    handle
        .address()
        .add(loopback_index, local_addr.into(), prefix_len)
        .replace()
        .execute()
        .await
        .map_err(|e| NetInterfaceError::AddAddress {
            addr: local_addr,
            prefix_len,
            source: e.into(),
        })?;
    // No destination = 0.0.0.0/0. Scope link, as `ip route add default dev lo` sends:
    // there is no gateway, every address is "directly" on lo.
    let default_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .output_interface(loopback_index)
        .scope(RouteScope::Link)
        .build();
    handle
        .route()
        .add(default_route)
        .replace()
        .execute()
        .await
        .map_err(|e| NetInterfaceError::AddDefaultRoute(e.into()))?;
    Ok(FunnelInterfaces {
        loopback_index,
        local_addr,
        prefix_len,
    })
}

async fn loopback_index(handle: &Handle) -> Result<u32, NetInterfaceError> {
    let mut links = handle
        .link()
        .get()
        .match_name(LOOPBACK.to_owned())
        .execute();
    match links.next().await {
        Some(Ok(link)) => Ok(link.header.index),
        Some(Err(rtnetlink::Error::NetlinkError(e))) if e.raw_code() == -libc::ENODEV => {
            Err(NetInterfaceError::NoLoopback)
        }
        Some(Err(e)) => Err(NetInterfaceError::LookUpLoopback(e.into())),
        None => Err(NetInterfaceError::NoLoopback),
    }
}

fn contains((net, prefix_len): (Ipv4Addr, u8), addr: Ipv4Addr) -> bool {
    if prefix_len > 32 {
        return false;
    }
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    u32::from(net) & mask == u32::from(addr) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_addresses_lie_in_the_synthetic_range() {
        let funnel = FunnelAddresses::default();
        assert!(contains(funnel.synthetic_net, funnel.local_addr));
        assert!(contains(SYNTHETIC_NET, Ipv4Addr::new(198, 19, 255, 254)));
        assert!(!contains(SYNTHETIC_NET, Ipv4Addr::new(198, 20, 0, 1)));
        assert!(!contains(SYNTHETIC_NET, Ipv4Addr::new(198, 17, 255, 255)));
        assert!(contains(
            (Ipv4Addr::UNSPECIFIED, 0),
            Ipv4Addr::new(8, 8, 8, 8)
        ));
        assert!(!contains(
            (Ipv4Addr::UNSPECIFIED, 33),
            Ipv4Addr::UNSPECIFIED
        ));
    }

    #[test]
    fn an_address_outside_the_range_is_refused_before_any_change() {
        let funnel = FunnelAddresses {
            local_addr: Ipv4Addr::new(10, 0, 0, 1),
            synthetic_net: SYNTHETIC_NET,
        };
        let error = bring_up_funnel_interfaces_in_current_netns(&funnel).unwrap_err();
        assert_eq!(
            error.to_string(),
            "funnel address 10.0.0.1 is not inside the synthetic range 198.18.0.0/15"
        );
    }
}
