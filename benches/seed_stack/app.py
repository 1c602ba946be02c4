"""Seed 1's secured FastAPI stack, reproduced for the throughput comparison.

Everything security-related is the seed's own code (ChatGLM3-6B 安全部署方案,
sections 3.2, 4.1/4.2, 5.1, 5.2 and 7): the BaseHTTPMiddleware that decodes
every bearer token with python-jose (HS256), endpoints that decode it again
through Depends(oauth2_scheme), slowapi's per-address limiter, the
SecurityFilter regexes, CORS, and uvicorn serving TLS. Only the model is
left out: GET /v1/models answers a static list (passed through the seed's
output filter), like securechat-server's /v1/models, so both sides measure
the security layers and the HTTP stack, not inference. /login is excluded
from the middleware by the seed, and serves as the unauthenticated baseline.

Run: SEED_SECRET_KEY=... python app.py --port 9000 --cert tls.crt --key tls.key
"""

import argparse
import os
import re

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import OAuth2PasswordBearer
from jose import JWTError, jwt
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address
from starlette.middleware.base import BaseHTTPMiddleware

SECRET_KEY = os.environ.get("SEED_SECRET_KEY", "your-secret-key-here")
ALGORITHM = "HS256"
# The seed's limit is 10/minute; the benchmark raises it so that it measures
# throughput, not 429s.
RATE_LIMIT = os.environ.get("SEED_RATE_LIMIT", "10/minute")


class OAuth2Middleware(BaseHTTPMiddleware):
    """Section 3.2."""

    def __init__(self, app, secret_key, algorithm="HS256"):
        super().__init__(app)
        self.secret_key = secret_key
        self.algorithm = algorithm

    async def dispatch(self, request, call_next):
        if request.url.path in ["/login", "/auth/callback"]:
            return await call_next(request)
        auth_header = request.headers.get("Authorization")
        if not auth_header or not auth_header.startswith("Bearer "):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED, detail="缺少有效的访问令牌"
            )
        token = auth_header[7:]
        try:
            payload = jwt.decode(token, self.secret_key, algorithms=[self.algorithm])
            request.state.user = payload
        except JWTError:
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED, detail="无效的访问令牌"
            )
        return await call_next(request)


class SecurityFilter:
    """Section 5.1, patterns as printed (the '+' and '@' that the seed's
    text rendering dropped from the e-mail pattern are restored)."""

    def __init__(self):
        self.sensitive_patterns = [
            r"\b\d{4}[-]?\d{4}[-]?\d{4}[-]?\d{4}\b",  # 信用卡号
            r"\b\d{3}[-]?\d{2}[-]?\d{4}\b",  # SSN
            r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Z|a-z]{2,}\b",  # 邮箱
        ]

    def filter_input(self, text: str) -> str:
        filtered_text = text
        for pattern in self.sensitive_patterns:
            filtered_text = re.sub(pattern, "[FILTERED]", filtered_text)
        return filtered_text

    def filter_output(self, text: str) -> str:
        return self.filter_input(text)


security_filter = SecurityFilter()

app = FastAPI(title="Secure ChatGLM3-6B API")

# Section 5.2.
limiter = Limiter(key_func=get_remote_address)
app.state.limiter = limiter
app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)

# Section 7.
app.add_middleware(
    CORSMiddleware,
    allow_origins=["https://your-domain.com"],
    allow_credentials=True,
    allow_methods=["*"],
    allow_headers=["*"],
)
app.add_middleware(OAuth2Middleware, secret_key=SECRET_KEY, algorithm=ALGORITHM)

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="token")


def verify_token(token: str):
    """Section 7."""
    try:
        return jwt.decode(token, SECRET_KEY, algorithms=[ALGORITHM])
    except JWTError:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="无效的访问令牌",
            headers={"WWW-Authenticate": "Bearer"},
        )


@app.get("/v1/models")
@limiter.limit(RATE_LIMIT)
async def list_models(request: Request, token: str = Depends(oauth2_scheme)):
    payload = verify_token(token)
    model_id = security_filter.filter_output("chatglm3-6b")
    return {
        "object": "list",
        "data": [{"id": model_id, "object": "model", "owned_by": "securechat"}],
        "user": payload.get("sub"),
    }


@app.get("/login")
async def login():
    return {"status": "ok"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        ssl_keyfile=args.key,
        ssl_certfile=args.cert,
        log_level="warning",
    )
