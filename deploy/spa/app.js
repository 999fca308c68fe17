// The example browser app (docs/browser-apps.md): signs a person in at Tessera with the
// authorization code flow and PKCE, keeps the access token in this module's memory only, calls
// the API, refreshes through the HttpOnly cookie Tessera sets (never readable here), signs out.
//
// It is registered as a public client with --refresh-token-cookie and --allowed-origins naming
// this page's origin. No framework, no inline script: it runs under a strict CSP
// (script-src 'self'; connect-src 'self' and Tessera's origin).

// What this page knows, and nothing more: the access token lives here until the page goes away.
const session = { accessToken: null, expiresAt: 0, refreshes: 0 };
let config;

const $ = (id) => document.getElementById(id);

class TesseraError extends Error {
  constructor(status, body) {
    super((body && (body.error_description || body.error)) || `HTTP ${status}`);
    this.status = status;
    this.error = body && body.error;
  }
}

// --- what the page shows ----------------------------------------------------------------------

function show(state, headline) {
  $("status").dataset.state = state;
  $("status").textContent = headline;
  $("signed-in").hidden = state !== "signed-in";
  $("signed-out").hidden = state !== "signed-out";
  for (const button of document.querySelectorAll("button")) button.disabled = state === "working";
}

function problem(text) {
  $("problem").textContent = text || "";
  $("problem").hidden = !text;
}

function signedOut(reason) {
  session.accessToken = null;
  session.expiresAt = 0;
  $("who").textContent = "";
  $("api-answer").hidden = true;
  show("signed-out", "Signed out");
  problem(reason);
}

// --- PKCE (RFC 7636, S256) ----------------------------------------------------------------------

function base64url(bytes) {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomText(bytes) {
  return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

async function challengeOf(verifier) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

// --- talking to Tessera ---------------------------------------------------------------------------

const redirectUri = () => `${location.origin}/callback`;

// Every call to Tessera sends credentials, so the browser stores the cookie Tessera sets and sends
// it back. A call that relies on the cookie adds Tessera-CSRF, which no cross-site form can send.
async function tessera(path, form, { usesCookie = false } = {}) {
  const headers = { "Content-Type": "application/x-www-form-urlencoded" };
  if (usesCookie) headers["Tessera-CSRF"] = "1";
  const response = await fetch(config.tessera + path, {
    method: "POST", headers, body: new URLSearchParams(form), credentials: "include", cache: "no-store",
  });
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) throw new TesseraError(response.status, body);
  return body;
}

function keep(tokens) {
  session.accessToken = tokens.access_token;
  session.expiresAt = Date.now() + tokens.expires_in * 1000;
  // Not a credential for any API (its audience is this app): kept only as the sign-out hint.
  if (tokens.id_token) sessionStorage.setItem("tessera.id_token", tokens.id_token);
}

async function signIn() {
  const verifier = randomText(32);
  const state = randomText(16);
  sessionStorage.setItem("tessera.pkce", JSON.stringify({ verifier, state }));
  const url = new URL(config.tessera + "/authorize");
  url.search = new URLSearchParams({
    response_type: "code", client_id: config.client_id, redirect_uri: redirectUri(), scope: config.scope,
    state, code_challenge: await challengeOf(verifier), code_challenge_method: "S256",
  });
  location.assign(url);
}

async function finishSignIn(answer) {
  const pending = JSON.parse(sessionStorage.getItem("tessera.pkce") || "null");
  sessionStorage.removeItem("tessera.pkce");
  history.replaceState(null, "", "/"); // the code leaves the address bar and the history
  if (answer.get("error")) throw new Error(answer.get("error_description") || answer.get("error"));
  if (!pending || answer.get("state") !== pending.state) throw new Error("this sign-in was not started here");
  // RFC 9207: the answer names the server it came from (against mix-up).
  if (answer.get("iss") !== config.issuer) throw new Error("the answer came from another server");
  keep(await tessera("/token", {
    grant_type: "authorization_code", client_id: config.client_id, code: answer.get("code"),
    redirect_uri: redirectUri(), code_verifier: pending.verifier,
  }));
}

// One refresh at a time, across this app's tabs: two tabs sending the same cookie at once would
// look like a stolen token being replayed (unless TESSERA_REFRESH_REUSE_GRACE covers it).
function refresh() {
  const run = async () => {
    keep(await tessera("/token", { grant_type: "refresh_token", client_id: config.client_id }, { usesCookie: true }));
    session.refreshes += 1;
    $("refreshes").value = String(session.refreshes);
  };
  return navigator.locks ? navigator.locks.request("tessera-refresh", run) : run();
}

async function whoAmI() {
  const response = await fetch(config.tessera + "/userinfo", {
    headers: { Authorization: `Bearer ${session.accessToken}` }, cache: "no-store",
  });
  if (response.ok) $("who").textContent = `as ${(await response.json()).preferred_username}`;
}

async function callApi() {
  if (!session.accessToken || Date.now() > session.expiresAt - 10_000) await refresh();
  let response = await fetch(config.api + "/me", { headers: { Authorization: `Bearer ${session.accessToken}` } });
  if (response.status === 401) {
    await refresh();
    response = await fetch(config.api + "/me", { headers: { Authorization: `Bearer ${session.accessToken}` } });
  }
  $("api-answer").textContent = JSON.stringify(await response.json(), null, 2);
  $("api-answer").hidden = false;
}

async function signOut() {
  // The refresh token is revoked through the cookie (Tessera clears it), then the sign-in at
  // Tessera ends (OpenID Connect RP-Initiated Logout) and the browser comes back here.
  await tessera("/revoke", { client_id: config.client_id }, { usesCookie: true });
  const hint = sessionStorage.getItem("tessera.id_token");
  sessionStorage.removeItem("tessera.id_token");
  session.accessToken = null;
  const url = new URL(config.tessera + "/logout");
  url.search = new URLSearchParams({
    client_id: config.client_id, post_logout_redirect_uri: `${location.origin}/`,
    ...(hint ? { id_token_hint: hint } : {}),
  });
  location.assign(url);
}

// --- wiring -------------------------------------------------------------------------------------

function act(action) {
  return async () => {
    show("working", "Working…");
    problem("");
    try {
      await action();
      show("signed-in", "Signed in");
    } catch (error) {
      if (error instanceof TesseraError) {
        signedOut("Your session has ended; sign in again."); // refused: revoked, expired or reused
      } else {
        show("signed-in", "Signed in"); // the network, not the session: try again
        problem(error.message);
      }
    }
  };
}

async function start() {
  config = await (await fetch("/config.json", { cache: "no-store" })).json();
  config.api = config.api || location.origin;
  $("sign-in").addEventListener("click", () => signIn());
  $("refresh").addEventListener("click", act(refresh));
  $("call-api").addEventListener("click", act(callApi));
  $("sign-out").addEventListener("click", () => signOut().catch((error) => problem(error.message)));

  const answer = new URLSearchParams(location.search);
  const signingIn = location.pathname === "/callback" && (answer.has("code") || answer.has("error"));
  try {
    if (signingIn) {
      show("working", "Signing in…");
      await finishSignIn(answer);
    } else {
      // A reload, or a new tab: the cookie, if any, still holds the session.
      show("working", "Starting…");
      await refresh();
    }
  } catch (error) {
    // Without a cookie (or with a dead one) resuming is refused: simply signed out.
    signedOut(signingIn || !(error instanceof TesseraError) ? error.message : "");
    return;
  }
  show("signed-in", "Signed in");
  await whoAmI();
}

start();
