// The dashboard's only script: keeps the API key in session storage, loads the tiles with
// it in the authorization header (never in a URL), and refreshes the North Star while the
// page is open.
const KEY = "sextant-api-key";
const LIVE_MS = 10000;
const main = document.getElementById("dashboard");
const prompt = document.getElementById("key-prompt");
const reason = document.getElementById("key-reason");
const live = document.getElementById("live");

function headers() {
  const key = sessionStorage.getItem(KEY);
  return key ? { authorization: "Bearer " + key } : {};
}

function askForKey(why) {
  main.replaceChildren();
  reason.textContent = why;
  prompt.hidden = false;
  document.getElementById("key-input").focus();
}

async function load() {
  const response = await fetch("/api/dashboard" + location.search, { headers: headers() });
  const text = await response.text();
  if (response.status === 401 || response.status === 403) {
    askForKey(text.trim());
    return;
  }
  prompt.hidden = true;
  if (!response.ok) {
    main.innerHTML = "";
    const error = document.createElement("p");
    error.className = "error page-error";
    error.dataset.error = text.trim();
    error.textContent = text.trim();
    main.append(error);
  } else {
    main.innerHTML = text;
  }
  const signOut = document.getElementById("sign-out");
  if (signOut) {
    signOut.addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      askForKey("Key forgotten.");
    });
  }
  document.body.dataset.ready = "true";
  if (response.ok && main.querySelector('[data-tile="north-star"] [data-metric-key]')) {
    setTimeout(refresh, LIVE_MS);
  }
}

// Re-renders the North Star tile with the same range; stops when the key stops working.
async function refresh() {
  try {
    const response = await fetch("/api/north-star" + location.search, { headers: headers() });
    if (response.status === 401 || response.status === 403) {
      askForKey((await response.text()).trim());
      return;
    }
    if (response.ok) {
      const tile = main.querySelector('[data-tile="north-star"]');
      if (tile) tile.outerHTML = await response.text();
      live.textContent = "live · updated " + new Date().toLocaleTimeString();
    }
  } catch (error) {
    live.textContent = "live refresh failed: " + error;
  }
  setTimeout(refresh, LIVE_MS);
}

prompt.addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key-input");
  sessionStorage.setItem(KEY, input.value.trim());
  input.value = "";
  load();
});

load().catch((error) => askForKey("Could not load the dashboard: " + error));
