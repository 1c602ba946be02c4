// The test's OpenID Provider: oidc-provider (a certified implementation)
// over HTTPS on loopback with the test server's dev certificate, one
// confidential client for the web UI, its development login and consent
// pages, and RSA signing keys the test can rotate.
import { generateKeyPairSync, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:https";
import Provider from "oidc-provider";

export function newSigningKey() {
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  return { ...privateKey.export({ format: "jwk" }), kid: randomUUID(), alg: "RS256", use: "sig" };
}

// The login name picks the role claim: "admin-…" -> admin, else guest.
function roleOf(login) {
  return login.startsWith("admin") ? "admin" : "guest";
}

/// Starts the provider on `port` (0: any) with `keys` (the first signs).
export async function startIdp({ port, keys, certPath, keyPath, client }) {
  const tls = { cert: readFileSync(certPath), key: readFileSync(keyPath) };
  // The issuer URL must be known before listening; bind first.
  const server = createServer(tls);
  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  const issuer = `https://localhost:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: client.id,
        client_secret: client.secret,
        redirect_uris: [client.redirectUri],
        grant_types: ["authorization_code"],
        response_types: ["code"],
        token_endpoint_auth_method: "client_secret_basic",
      },
    ],
    jwks: { keys },
    findAccount: async (_ctx, id) => ({
      accountId: id,
      claims: async () => ({ sub: id, name: `User ${id}`, role: roleOf(id) }),
    }),
    claims: { openid: ["sub"], profile: ["name", "role"] },
    // Put the profile claims (the role) into the ID token itself.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    cookies: { keys: ["test-only-cookie-key"] },
  });
  server.on("request", provider.callback());
  const sockets = new Set();
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  return {
    issuer,
    port: server.address().port,
    // Stops listening and drops open connections: the issuer is down.
    async stop() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
