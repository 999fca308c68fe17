"""Property tests of the token endpoint's parsing: whatever arrives, the answer is an OAuth error
or the parameters that were sent, never any other exception (which would be a 500)."""

from __future__ import annotations

import base64
from urllib.parse import quote, quote_plus, urlencode

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tessera.server.oauth.client_auth import extract_credentials, parse_basic
from tessera.server.oauth.errors import OAuthError
from tessera.server.http.forms import MAX_PARAMETERS, MAX_VALUE_LENGTH, parse_form

EXAMPLES = settings(max_examples=300, deadline=None)

# Values as a client library would send them: printable, any script.
printable = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=64)
names = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="_-"), min_size=1, max_size=20)
# Bytes that look like a form often enough to reach every branch of the parser.
form_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b"grant_type", b"=", b"&", b"%", b"%00", b"%ff", b"%C3%A9", b"+", b";", b"a", b"\x00",
                              b"\x7f", b"\xc3\xa9", b"scope", b"%2", b"=="]), max_size=40).map(b"".join),
)


@EXAMPLES
@given(form_bytes)
@example(b"&".join(b"p%d=1" % i for i in range(MAX_PARAMETERS + 1)))
@example(b"a=" + b"x" * (MAX_VALUE_LENGTH + 1))
@example(b"a=%ff")
def test_any_body_parses_or_is_an_oauth_error(body):
    try:
        form = parse_form(body)
    except OAuthError as error:
        assert error.status == 400 and error.error == "invalid_request"
        return
    assert len(form) <= MAX_PARAMETERS
    assert all(len(value) <= MAX_VALUE_LENGTH and "\x00" not in value for value in form.values())


@settings(max_examples=2000, deadline=None)
@given(form_bytes.map(lambda b: b.decode("ascii", "replace").replace("\ufffd", "?")))
@example("a=b=c&&=x&y&+%2B=%20+")
@example("&".join(["p=1"] * MAX_PARAMETERS) + "&")
@example("&".join(["p=1"] * MAX_PARAMETERS) + "&&")
@example("a=%C3")
def test_the_form_is_split_and_decoded_as_parse_qsl_does(text):
    """tessera.server.http.forms reads pairs without urllib's per-parameter work, and must read exactly what
    urllib.parse.parse_qsl reads (or refuse exactly what it refuses)."""
    from urllib.parse import parse_qsl

    from tessera.server.http.forms import _pairs

    def outcome(parse):
        try:
            return parse(text)
        except (ValueError, UnicodeDecodeError) as error:
            return type(error)

    expected = outcome(lambda t: parse_qsl(t, keep_blank_values=True, max_num_fields=MAX_PARAMETERS, errors="strict"))
    assert outcome(_pairs) == expected


@EXAMPLES
@given(st.dictionaries(names, printable, max_size=MAX_PARAMETERS))
def test_what_a_client_encodes_is_what_the_server_reads(params):
    body = urlencode(params).encode("ascii")
    assert parse_form(body) == {name: value for name, value in params.items() if value != ""}


@EXAMPLES
@given(st.text(max_size=200))
@example("Basic")
@example("Basic =")
@example("Basic " + base64.b64encode(b"\xff\xfe:x").decode())
@example("Basic " + base64.b64encode(b"a%ZZ:b").decode())
@example("Basic " + base64.b64encode(b"a%ff:b").decode())
def test_any_authorization_header_parses_or_is_an_oauth_error(header):
    try:
        client_id, secret = parse_basic(header)
    except OAuthError as error:
        assert error.error == "invalid_client" and error.status == 401
        return
    assert client_id and secret


@EXAMPLES
@given(st.binary(max_size=120))
def test_any_base64_payload_parses_or_is_an_oauth_error(payload):
    try:
        extract_credentials("Basic " + base64.b64encode(payload).decode(), {})
    except OAuthError as error:
        assert error.error in {"invalid_client", "invalid_request"}


@EXAMPLES
@given(printable.filter(bool), printable.filter(bool))
def test_client_secret_basic_round_trips_any_printable_id_and_secret(client_id, secret):
    # RFC 6749 section 2.3.1: each is form-urlencoded before the Basic encoding.
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    header = "Basic " + base64.b64encode(raw).decode()
    assert parse_basic(header) == (client_id, secret)


@EXAMPLES
@given(
    # As parse_form hands them on: empty values are dropped (RFC 6749 section 3.2).
    st.dictionaries(st.sampled_from(["client_id", "client_secret", "grant_type"]), printable.filter(bool)),
    st.one_of(st.none(), st.text(max_size=60)),
)
def test_credentials_from_any_form_and_header_or_an_oauth_error(form, header):
    try:
        credentials = extract_credentials(header, form)
    except OAuthError as error:
        assert error.error in {"invalid_client", "invalid_request"}
        return
    assert credentials.method in {"client_secret_basic", "client_secret_post", "none"}
    assert credentials.client_id


def test_percent_encoded_utf8_is_decoded():
    assert parse_form(("scope=" + quote("caf\u00e9 r\u00e9sum\u00e9")).encode()) == {"scope": "caf\u00e9 r\u00e9sum\u00e9"}
