"use strict";
// Says why the last sign-in failed (the server passes it in ?failed=).
(function () {
  const failed = new URLSearchParams(location.search).get("failed");
  if (failed) {
    const line = document.getElementById("failed");
    line.textContent = "Sign-in failed: " + failed;
    line.hidden = false;
  }
})();
