// What the server defines and the page must agree with (chat/views.py PAGE_CONSTANTS,
// the `page-constants` json_script in templates/chat/chat.html): the socket's close
// codes and the title's length. Read once, here.
const element = document.getElementById("page-constants");

export const constants = element ? JSON.parse(element.textContent) : {};
