"""Hypothesis properties of the compiled router (DESIGN.md §3 naming rules)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymesh.errors import NoRoute
from pymesh.policy.model import Endpoint, MeshSpec, ServicePort, ServiceSpec
from pymesh.policy.snapshot import Mesh
from pymesh.proxy.pool import PoolManager
from pymesh.proxy.router import OutboundRouter, split_authority

_name = st.text(string.ascii_lowercase, min_size=1, max_size=8).map(lambda s: "s" + s)
_ns = st.sampled_from(["default", "shop", "ops"])
_proto = st.sampled_from(["tcp", "http", "http2", "grpc", None])
_ports = st.lists(
    st.tuples(st.integers(1, 65535), _proto),
    min_size=1,
    max_size=4,
    unique_by=lambda t: t[0],
)
_services = st.dictionaries(st.tuples(_ns, _name), _ports, min_size=1, max_size=6)


def _mesh(services: dict[tuple[str, str], list[tuple[int, str | None]]]) -> Mesh:
    specs = {
        f"{ns}/{name}": ServiceSpec(
            service_account=name,
            ports=tuple(
                ServicePort(port=p, protocol=proto)  # type: ignore[arg-type]
                for p, proto in ports
            ),
            endpoints=(Endpoint(address="127.0.0.1", port=9),),
        )
        for (ns, name), ports in services.items()
    }
    return Mesh.build(spec=MeshSpec(mtls="DISABLE"), services=specs)


def _router(mesh: Mesh, ns: str = "default") -> OutboundRouter:
    return OutboundRouter(mesh, source_namespace=ns, pools=PoolManager(), filters=lambda r, p: [])


@settings(max_examples=200, deadline=None)
@given(_services, st.sampled_from(["default", "shop", "ops"]))
def test_every_name_form_with_a_port_reaches_that_service_and_port(
    services: dict[tuple[str, str], list[tuple[int, str | None]]], source_ns: str
) -> None:
    router = _router(_mesh(services), source_ns)
    for (ns, name), ports in services.items():
        forms = [f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
        if ns == source_ns:
            forms.append(name)
        for form in forms:
            for port, _ in ports:
                for variant in (form, form.upper()):
                    route = router.route(f"{variant}:{port}".encode())
                    assert (route.namespace, route.service, route.port.port) == (ns, name, port)


@settings(max_examples=200, deadline=None)
@given(_services)
def test_without_a_port_the_only_or_first_fitting_port(
    services: dict[tuple[str, str], list[tuple[int, str | None]]],
) -> None:
    router = _router(_mesh(services))
    for (ns, name), ports in services.items():
        fitting = [p for p, proto in ports if proto in ("http", None)]
        host = f"{name}.{ns}".encode()
        if len(ports) == 1:
            assert router.route(host).port.port == ports[0][0]
        elif fitting:
            assert router.route(host).port.port == fitting[0]
        else:
            with pytest.raises(NoRoute):
                router.route(host)


@settings(max_examples=200, deadline=None)
@given(
    _services,
    st.text(string.ascii_lowercase + ".-", min_size=1, max_size=20),
    st.integers(1, 65535),
)
def test_names_and_ports_not_in_the_mesh_are_no_route(
    services: dict[tuple[str, str], list[tuple[int, str | None]]], host: str, port: int
) -> None:
    router = _router(_mesh(services))
    known = {f"{n}.{ns}" for ns, n in services} | {n for ns, n in services if ns == "default"}
    known |= {f"{n}.{ns}.svc" for ns, n in services}
    known |= {f"{n}.{ns}.svc.cluster.local" for ns, n in services}
    if host not in known:
        with pytest.raises(NoRoute):
            router.route(f"{host}:{port}".encode())
    for (ns, name), ports in services.items():
        if port not in {p for p, _ in ports}:
            with pytest.raises(NoRoute):
                router.route(f"{name}.{ns}:{port}".encode())


@given(st.binary(max_size=40))
def test_split_authority_never_raises_anything_but_no_route(raw: bytes) -> None:
    try:
        host, port = split_authority(raw)
    except NoRoute:
        return
    assert port is None or 0 < port < 65536
    assert host == host.lower()
