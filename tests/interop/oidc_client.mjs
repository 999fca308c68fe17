// An app signing a person in at Tessera with openid-client v6 (panva), the way its README shows:
// discovery, an authorization URL with PKCE, state and nonce, then the code grant, a refresh,
// UserInfo and RP-initiated logout. tests/test_sign_in_interop.py does the person's part in between.
//
//   node oidc_client.mjs start  < {"issuer", "client_id", "client_secret"?, "redirect_uri", "scope"}
//     prints {"authorization_url", "code_verifier", "state", "nonce"}
//   node oidc_client.mjs finish < the same, plus {"callback_url", "code_verifier", "state", "nonce",
//                                 "post_logout_redirect_uri", "logout_state"}
//     prints what the library made of each step (see finish below)
//
// Input comes on stdin, never in arguments, so that no secret shows in a process listing. Any
// failure is one JSON object on stderr and exit status 1.

import * as client from 'openid-client'

async function readStdin() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

async function configure(input) {
  // client_secret_basic for a confidential client, `none` (client_id in the body) for a public one.
  const authentication = input.client_secret ? client.ClientSecretBasic(input.client_secret) : client.None()
  // Tessera under test listens on http://127.0.0.1; openid-client insists on https otherwise.
  return client.discovery(new URL(input.issuer), input.client_id, undefined, authentication, {
    execute: [client.allowInsecureRequests],
  })
}

function describe(error) {
  return {
    name: error?.name,
    code: error?.code,
    message: error?.message,
    error: error?.error,
    error_description: error?.error_description,
    status: error?.status,
    cause: error?.cause instanceof Error ? error.cause.message : error?.cause,
  }
}

async function start(input) {
  const config = await configure(input)
  const code_verifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const nonce = client.randomNonce()
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: input.redirect_uri,
    scope: input.scope,
    code_challenge: await client.calculatePKCECodeChallenge(code_verifier),
    code_challenge_method: 'S256',
    state,
    nonce,
  })
  return { authorization_url: url.href, code_verifier, state, nonce, server_metadata: config.serverMetadata() }
}

// What openid-client says about an authorization response that is not the one the server sent:
// it must refuse it before any token request, so the code stays unspent.
async function refusal(config, url, input) {
  try {
    await client.authorizationCodeGrant(config, url, {
      pkceCodeVerifier: input.code_verifier, expectedState: input.state, expectedNonce: input.nonce,
    })
    return null
  } catch (error) {
    return describe(error)
  }
}

async function finish(input) {
  const config = await configure(input)
  const callback = new URL(input.callback_url)

  // RFC 9207: the metadata says `iss` is always sent, so a response naming another issuer, or
  // none, is a mix-up attack and refused.
  const otherIssuer = new URL(callback)
  otherIssuer.searchParams.set('iss', 'https://attacker.example')
  const withoutIssuer = new URL(callback)
  withoutIssuer.searchParams.delete('iss')
  const refused = {
    other_issuer: await refusal(config, otherIssuer, input),
    without_issuer: await refusal(config, withoutIssuer, input),
  }

  const tokens = await client.authorizationCodeGrant(config, callback, {
    pkceCodeVerifier: input.code_verifier,
    expectedState: input.state,
    expectedNonce: input.nonce,
    idTokenExpected: true,
  })
  const claims = tokens.claims()
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token)
  // expectedSubject: openid-client itself refuses a UserInfo answer about anybody else.
  const userinfo = await client.fetchUserInfo(config, refreshed.access_token, claims.sub)
  const endSession = client.buildEndSessionUrl(config, {
    id_token_hint: refreshed.id_token ?? tokens.id_token,
    post_logout_redirect_uri: input.post_logout_redirect_uri,
    state: input.logout_state,
  })
  return {
    refused,
    tokens: { ...tokens },
    id_token_claims: claims,
    expires_in: tokens.expiresIn(),
    refreshed: { ...refreshed },
    refreshed_id_token_claims: refreshed.claims() ?? null,
    userinfo,
    end_session_url: endSession.href,
  }
}

const steps = { start, finish }
const step = steps[process.argv[2]]
if (!step) {
  process.stderr.write(JSON.stringify({ message: `usage: oidc_client.mjs ${Object.keys(steps).join('|')}` }) + '\n')
  process.exit(2)
}
try {
  process.stdout.write(JSON.stringify(await step(await readStdin())) + '\n')
} catch (error) {
  process.stderr.write(JSON.stringify(describe(error)) + '\n')
  process.exit(1)
}
