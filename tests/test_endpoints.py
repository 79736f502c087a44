"""realtime.endpoints: listener descriptions (Daphne's helper), backlog, addresses."""

from __future__ import annotations

import os
import socket

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from realtime.endpoints import (
    DEFAULT_BACKLOG,
    adopted_socket_family,
    build_endpoint_description_strings,
    describe_address,
    is_port_number,
    keep_adopted_unix,
    port_description,
    with_backlog,
)


class TestBuildEndpointDescriptionStrings:
    def test_ipv4(self):
        assert build_endpoint_description_strings(host="127.0.0.1", port=8000) == [
            "tcp:port=8000:interface=127.0.0.1"
        ]

    def test_port_as_string(self):
        assert build_endpoint_description_strings("10.0.0.1", "8001") == [
            "tcp:port=8001:interface=10.0.0.1"
        ]

    def test_port_zero_is_a_port(self):
        assert build_endpoint_description_strings("127.0.0.1", 0) == [
            "tcp:port=0:interface=127.0.0.1"
        ]

    @pytest.mark.parametrize("host", ["::1", "[::1]"])
    def test_ipv6_with_and_without_brackets(self, host):
        assert build_endpoint_description_strings(host=host, port=8000) == [
            r"tcp:port=8000:interface=\:\:1"
        ]

    def test_ipv6_full_address(self):
        assert build_endpoint_description_strings("[fe80::1:2]", 80) == [
            r"tcp:port=80:interface=fe80\:\:1\:2"
        ]

    def test_unix(self):
        assert build_endpoint_description_strings(unix_socket="/tmp/rt.sock") == [
            "unix:/tmp/rt.sock"
        ]

    def test_unix_path_with_colon_is_escaped(self):
        assert build_endpoint_description_strings(unix_socket="/tmp/a:b=c.sock") == [
            r"unix:/tmp/a\:b\=c.sock"
        ]

    def test_tcp_and_unix_together(self):
        assert build_endpoint_description_strings("127.0.0.1", 9000, "/run/rt.sock") == [
            "tcp:port=9000:interface=127.0.0.1",
            "unix:/run/rt.sock",
        ]

    def test_nothing(self):
        assert build_endpoint_description_strings() == []

    def test_host_without_port(self):
        with pytest.raises(ValueError, match="requires both port and host"):
            build_endpoint_description_strings(host="127.0.0.1")

    @pytest.mark.parametrize("port", [8000, 0])
    def test_port_without_host(self, port):
        with pytest.raises(ValueError, match="requires both port and host"):
            build_endpoint_description_strings(port=port)

    def test_descriptions_parse_as_twisted_endpoints(self):
        from twisted.internet.endpoints import serverFromString

        for host, kind, interface in [("127.0.0.1", "TCP4", "127.0.0.1"),
                                      ("[::1]", "TCP4", "::1")]:
            (desc,) = build_endpoint_description_strings(host, 8123)
            endpoint = serverFromString(None, desc)
            assert type(endpoint).__name__ == f"{kind}ServerEndpoint"
            assert endpoint._interface == interface
            assert endpoint._port == 8123
        (desc,) = build_endpoint_description_strings(unix_socket="/tmp/a:b.sock")
        assert serverFromString(None, desc)._address == "/tmp/a:b.sock"


class TestPortDescription:
    def test_bare_number_is_loopback(self):
        assert port_description("8000", None) == "tcp:port=8000:interface=127.0.0.1"

    def test_bare_number_with_bind(self):
        assert port_description("8000", "0.0.0.0") == "tcp:port=8000:interface=0.0.0.0"
        assert port_description("0", "[::1]") == r"tcp:port=0:interface=\:\:1"

    @pytest.mark.parametrize("value", ["tcp:9000", "unix:/tmp/x.sock",
                                       "ssl:443:privateKey=k.pem", "systemd:domain=INET:index=0"])
    def test_description_passes_through(self, value):
        assert port_description(value, None) == value
        assert port_description(value, "0.0.0.0") == value

    def test_non_ascii_digits_are_not_a_port_number(self):
        assert not is_port_number("²")
        assert not is_port_number("٣")
        assert port_description("²", None) == "²"
        assert is_port_number("8000")
        assert not is_port_number("")
        assert not is_port_number("-1")


class TestWithBacklog:
    @pytest.mark.parametrize("desc", [
        "tcp:8000",
        "tcp:port=8000:interface=127.0.0.1",
        "tcp6:8000",
        "ssl:8443:privateKey=k.pem:certKey=c.pem",
        "tls:/etc/certs:port=8444",
        "haproxy:tcp:9000",
    ])
    def test_tcp_listeners_get_1024(self, desc):
        assert DEFAULT_BACKLOG == 1024
        assert with_backlog(desc) == f"{desc}:backlog=1024"

    @pytest.mark.parametrize("desc", [
        "tcp:8000:backlog=10",
        "tcp:backlog=10:port=8000",
        "ssl:8443:backlog=5:privateKey=k.pem",
    ])
    def test_a_named_backlog_is_kept(self, desc):
        assert with_backlog(desc) == desc

    def test_backlog_inside_an_escaped_value_is_not_a_parameter(self):
        desc = r"ssl:8443:privateKey=/certs/a\:backlog=1.pem"
        assert with_backlog(desc) == desc + ":backlog=1024"

    @pytest.mark.parametrize("desc", [
        "unix:/tmp/x.sock",
        "systemd:domain=INET:index=0",
        "haproxy:unix:/tmp/x.sock",
    ])
    def test_other_listeners_unchanged(self, desc):
        assert with_backlog(desc) == desc

    def test_twisted_takes_the_backlog(self):
        from twisted.internet.endpoints import serverFromString

        assert serverFromString(None, with_backlog("tcp:0"))._backlog == 1024
        assert serverFromString(None, with_backlog("tcp:0:backlog=7"))._backlog == 7
        wrapped = serverFromString(None, with_backlog("haproxy:tcp:0"))
        assert wrapped._wrappedEndpoint._backlog == 1024


class TestDescribeAddress:
    def test_ipv4(self):
        assert describe_address(IPv4Address("TCP", "127.0.0.1", 41234)) == (
            "tcp:127.0.0.1:41234"
        )

    def test_ipv6(self):
        assert describe_address(IPv6Address("TCP", "::1", 8000)) == "tcp6:[::1]:8000"

    def test_unix_bytes_and_str(self):
        assert describe_address(UNIXAddress(b"/tmp/rt.sock")) == "unix:/tmp/rt.sock"
        assert describe_address(UNIXAddress("/tmp/rt.sock")) == "unix:/tmp/rt.sock"

    def test_unknown(self):
        assert describe_address("something") == "something"


class TestAdoptedSocketFamily:
    def test_listening_tcp_socket(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            assert adopted_socket_family(sock.fileno()) == socket.AF_INET
            assert sock.fileno() != -1  # detached, not closed

    def test_listening_unix_socket(self, tmp_path):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(tmp_path / "s"))
            sock.listen()
            assert adopted_socket_family(sock.fileno()) == socket.AF_UNIX

    def test_not_listening(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            with pytest.raises(ValueError, match="not a listening socket"):
                adopted_socket_family(sock.fileno())

    def test_datagram(self):
        with socket.socket(type=socket.SOCK_DGRAM) as sock:
            with pytest.raises(ValueError, match="not a stream socket"):
                adopted_socket_family(sock.fileno())

    def test_not_a_socket(self, tmp_path):
        with open(tmp_path / "f", "w") as f:
            with pytest.raises(ValueError, match="is not a socket"):
                adopted_socket_family(f.fileno())
            f.write("still open")

    def test_closed_fd(self):
        fd = 987
        with pytest.raises(OSError):
            os.fstat(fd)
        with pytest.raises(ValueError, match="987 is not a socket"):
            adopted_socket_family(fd)


class TestKeepAdoptedUnix:
    """A ``systemd:`` unix socket is systemd's: the port that stops leaves it listening
    with its path, also behind the PROXY protocol (``haproxy:systemd:domain=UNIX:...``)."""

    @pytest.mark.parametrize("haproxy", [False, True])
    @pytest_twisted.ensureDeferred
    async def test_stopping_leaves_the_socket_listening_with_its_path(self, tmp_path,
                                                                       haproxy):
        from twisted.internet import reactor
        from twisted.internet.endpoints import AdoptedStreamServerEndpoint
        from twisted.internet.protocol import Factory, Protocol
        from twisted.protocols.haproxy import proxyEndpoint

        path = str(tmp_path / "systemd.sock")
        with socket.socket(socket.AF_UNIX) as owner:  # systemd's socket
            owner.bind(path)
            owner.listen()
            endpoint = AdoptedStreamServerEndpoint(reactor, os.dup(owner.fileno()),
                                                   socket.AF_UNIX)
            described = proxyEndpoint(endpoint) if haproxy else endpoint
            port = await keep_adopted_unix(reactor, described).listen(
                Factory.forProtocol(Protocol))
            await port.stopListening()
            assert os.path.exists(path)
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(path)  # waits in the backlog for the next start
            owner.settimeout(5)
            owner.accept()[0].close()

    def test_other_endpoints_are_left_alone(self):
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.protocols.haproxy import proxyEndpoint

        tcp = TCP4ServerEndpoint(reactor, 0)
        wrapped = proxyEndpoint(tcp)
        assert keep_adopted_unix(reactor, tcp) is tcp
        assert keep_adopted_unix(reactor, wrapped) is wrapped
