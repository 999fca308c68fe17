// The peer of `make bench`'s sign-in measurements (bench/bench_sign_in.py): panva's oidc-provider
// (the version package-lock.json pins) configured for the code flow as Tessera's bench client is:
//  - one confidential client, client_secret_basic, grant types authorization_code and
//    refresh_token, one redirect URI, scopes "openid api.read", PKCE S256;
//  - on a code exchange: a JWT access token (RFC 9068, typ at+jwt, audience
//    https://api.example.com, through features.resourceIndicators), a refresh token, and an ID
//    token since the scope has openid; everything signed ES256 with a P-256 key made at start;
//  - a refresh token whenever the client may use the refresh_token grant (Tessera's rule; the
//    library's default also asks for offline_access);
//  - codes bound to the sign-in session they came from, as the library does without
//    offline_access, and as Tessera's are (an exchange finds the session, or refuses the code);
//  - the library's own in-memory adapter, given a bigger LRU (its default holds 1,000 entries,
//    which a pool of codes minted beforehand outgrows), which POST /reset empties.
// An admin listener on 127.0.0.1:ADMIN_PORT mints codes with the provider's own models, the way
// its authorization endpoint does after a sign-in (Session + Grant + AuthorizationCode, one each
// per code): POST /mint-codes with one S256 code challenge per line answers one code per line, in
// the same order. The login pages are not driven here: oidc-provider leaves them to the app.
// Run with --expose-gc: a full collection then follows each minting, outside the timed runs.
// Env: PORT (default 3000), ADMIN_PORT (default PORT+1), CLIENT_ID, CLIENT_SECRET, REDIRECT_URI.
//
// With PKJWT_JWKS_FILE set (bench/bench_pkjwt.py, the endpoint cc_pkjwt), a second client as well,
// PKJWT_CLIENT_ID (default bench-pkjwt): client_credentials only, token_endpoint_auth_method
// private_key_jwt with token_endpoint_auth_signing_alg ES256, its public JWK Set inline (the
// file's), scope "api.read"; features.clientCredentials is enabled for it, and its access tokens
// are the same ES256 JWTs for https://api.example.com (resourceIndicators' default resource). The
// assertions' jti are recorded by the library's ReplayDetection, in the same in-memory store.
// Without PKJWT_JWKS_FILE nothing changes.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const LIB = path.join(HERE, 'node_modules', 'oidc-provider', 'lib');
const { default: Provider } = await import(pathToFileURL(path.join(LIB, 'index.js')).href);
// Deep imports by path: the package exports only its entry point.
const { default: MemoryAdapter } = await import(pathToFileURL(path.join(LIB, 'adapters', 'memory_adapter.js')).href);
const { default: LRU } = await import(pathToFileURL(path.join(LIB, 'helpers', 'lru.js')).href);

const PORT = Number(process.env.PORT || 3000);
const ADMIN_PORT = Number(process.env.ADMIN_PORT || PORT + 1);
const ISSUER = `http://127.0.0.1:${PORT}`;
const RESOURCE = 'https://api.example.com';
const CLIENT_ID = process.env.CLIENT_ID || 'bench-app';
const CLIENT_SECRET = process.env.CLIENT_SECRET || 'bench-app-secret-5d2c8e71a9f04b63';
const REDIRECT_URI = process.env.REDIRECT_URI || 'https://app.example/cb';
const SCOPE = 'openid api.read';

// The store the adapter reads through; /reset swaps in an empty one.
const STORE_SIZE = 2_000_000;
let lru = new LRU({ maxSize: STORE_SIZE });
const store = {
  get: (key) => lru.get(key),
  set: (key, value, options) => lru.set(key, value, options),
  delete: (key) => lru.delete(key),
  has: (key) => lru.has(key),
};

const PKJWT_JWKS_FILE = process.env.PKJWT_JWKS_FILE || '';
const PKJWT_CLIENT_ID = process.env.PKJWT_CLIENT_ID || 'bench-pkjwt';
const extraClients = PKJWT_JWKS_FILE ? [{
  client_id: PKJWT_CLIENT_ID,
  token_endpoint_auth_method: 'private_key_jwt',
  token_endpoint_auth_signing_alg: 'ES256',
  jwks: JSON.parse(fs.readFileSync(PKJWT_JWKS_FILE, 'utf8')),
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'api.read',
  id_token_signed_response_alg: 'ES256', // the metadata's default, RS256, has no key here
}] : [];

const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'es256-bench-sign-in', alg: 'ES256', use: 'sig' };

const provider = new Provider(ISSUER, {
  adapter: (model) => new MemoryAdapter(model, store),
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [REDIRECT_URI],
    scope: SCOPE,
    id_token_signed_response_alg: 'ES256',
  }, ...extraClients],
  jwks: { keys: [jwk] },
  scopes: ['openid', 'api.read'],
  rotateRefreshToken: true,
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  cookies: { keys: ['bench-cookie-key-0123456789abcdef'] },
  ttl: {
    AccessToken: 300,
    AuthorizationCode: 60,
    Grant: 14 * 24 * 3600,
    IdToken: 300,
    Interaction: 600,
    RefreshToken: 14 * 24 * 3600,
    Session: 8 * 3600,
  },
  features: {
    devInteractions: { enabled: false },
    ...(PKJWT_JWKS_FILE ? { clientCredentials: { enabled: true } } : {}),
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => RESOURCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resourceIndicator) => {
        if (resourceIndicator !== RESOURCE) throw new Error('unknown resource');
        return {
          scope: 'api.read',
          audience: RESOURCE,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.on('grant.error', (ctx, err) => console.error(`grant.error ${err.error}: ${err.error_detail || err.message}`));
const server = http.createServer(provider.callback());
server.keepAliveTimeout = 65_000;
server.listen(PORT, '127.0.0.1', () => console.log(`pid ${process.pid} listening ${ISSUER}`));

const client = await provider.Client.find(CLIENT_ID);

// One code as the authorization endpoint makes it for a person who just signed in: a session
// with this client's grant in it, and the code bound to both.
async function mintCode(challenge, nonce) {
  const accountId = `user-${crypto.randomUUID()}`;
  const now = Math.floor(Date.now() / 1000);
  const grant = new provider.Grant({ accountId, clientId: CLIENT_ID });
  grant.addOIDCScope('openid');
  grant.addResourceScope(RESOURCE, 'api.read');
  const grantId = await grant.save();
  const session = new provider.Session({ accountId, loginTs: now });
  session.grantIdFor(CLIENT_ID, grantId);
  session.sidFor(CLIENT_ID, crypto.randomUUID());
  await session.save(8 * 3600);
  const code = new provider.AuthorizationCode({
    accountId,
    authTime: now,
    client,
    codeChallenge: challenge,
    codeChallengeMethod: 'S256',
    grantId,
    nonce,
    redirectUri: REDIRECT_URI,
    resource: RESOURCE,
    scope: SCOPE,
    sessionUid: session.uid,
    sid: session.sidFor(CLIENT_ID),
  });
  code.expiresWithSession = true;
  return code.save();
}

function body(req) {
  return new Promise((resolve, reject) => {
    const parts = [];
    req.on('data', (part) => parts.push(part));
    req.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
    req.on('error', reject);
  });
}

http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, 'http://x');
    if (req.method === 'POST' && url.pathname === '/mint-codes') {
      const nonce = url.searchParams.get('nonce') || undefined;
      const challenges = (await body(req)).split('\n').filter(Boolean);
      const codes = [];
      for (const challenge of challenges) codes.push(await mintCode(challenge, nonce));
      // The minting's garbage (and the last run's store, after /reset) collected now, not in the
      // timed run that follows (node --expose-gc).
      if (globalThis.gc) globalThis.gc();
      res.writeHead(200, { 'content-type': 'text/plain' }).end(`${codes.join('\n')}\n`);
    } else if (req.method === 'POST' && url.pathname === '/reset') {
      lru = new LRU({ maxSize: STORE_SIZE });
      res.writeHead(204).end();
    } else {
      res.writeHead(404).end();
    }
  } catch (e) {
    res.writeHead(500).end(String(e?.stack || e));
  }
}).listen(ADMIN_PORT, '127.0.0.1', () => console.log(`admin on 127.0.0.1:${ADMIN_PORT}`));
process.on('SIGTERM', () => process.exit(0));
