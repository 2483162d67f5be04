// The page's one CSRF reader and JSON POST (static/js/http.js, a classic script that
// base.html loads on every page before this module runs), for the modules to import.
export const { csrfToken, postJSON } = window.SanjaiHttp;
