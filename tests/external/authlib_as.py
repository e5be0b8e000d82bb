"""An OAuth 2.0 authorization server built on Authlib's RFC 7523 JWT bearer grant
(authlib.oauth2.rfc7523.JWTBearerGrant), for tests/external_as.rs.

Authlib does the grant: it parses the assertion, verifies its ES256 signature against
the trusted identity provider's public key, and checks iss, aud and exp (with its
default 60 s leeway); this file only supplies the trust configuration and storage.

    python authlib_as.py <idp-issuer> <idp-public-jwk-json>

Listens on an ephemeral loopback port and prints "LISTENING <port>" once it accepts
connections. Endpoints: POST /token (the grant), GET /stats (exchange count and the
subject of every token issued), GET /.well-known/oauth-authorization-server.
"""

import json
import sys
import threading
import time

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oauth2.rfc7523 import JWTBearerGrant
from flask import Flask, jsonify
from werkzeug.serving import make_server

IDP_ISSUER = sys.argv[1]
IDP_PUBLIC_JWK = json.loads(sys.argv[2])
GATEWAY = "gateway"

lock = threading.Lock()
stats = {"exchanges": 0, "issued": {}}


class Client(ClientMixin):
    """The gateway that exchanges users' assertions."""

    def get_client_id(self):
        return GATEWAY

    def get_allowed_scope(self, scope):
        return scope or ""

    def check_grant_type(self, grant_type):
        return grant_type == JWTBearerGrant.GRANT_TYPE


class User:
    def __init__(self, subject):
        self.subject = subject

    def get_user_id(self):
        return self.subject


class TrustedIdpGrant(JWTBearerGrant):
    """Assertions issued by the identity provider, for the gateway."""

    def resolve_issuer_client(self, issuer):
        return Client() if issuer == IDP_ISSUER else None

    def resolve_client_public_key(self, client):
        return IDP_PUBLIC_JWK

    def authenticate_user(self, subject):
        return User(subject)

    def has_granted_permission(self, client, user):
        return True

    def get_audiences(self):
        return [token_endpoint]

    def validate_token_request(self):
        with lock:
            stats["exchanges"] += 1
        super().validate_token_request()


def save_token(token, request):
    with lock:
        stats["issued"][token["access_token"]] = request.user.get_user_id()


app = Flask(__name__)
app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {JWTBearerGrant.GRANT_TYPE: 3600}
authorization = AuthorizationServer(app, query_client=lambda _: Client(), save_token=save_token)
authorization.register_grant(TrustedIdpGrant)


@app.post("/token")
def token():
    return authorization.create_token_response()


@app.get("/stats")
def get_stats():
    with lock:
        return jsonify(stats)


@app.get("/.well-known/oauth-authorization-server")
def metadata():
    return jsonify(
        {
            "issuer": issuer,
            "token_endpoint": token_endpoint,
            "grant_types_supported": [JWTBearerGrant.GRANT_TYPE],
        }
    )


server = make_server("127.0.0.1", 0, app, threaded=True)
port = server.socket.getsockname()[1]
issuer = f"http://127.0.0.1:{port}"
token_endpoint = f"{issuer}/token"
print(f"LISTENING {port}", flush=True)
server.serve_forever()
