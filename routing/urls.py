from django.urls import path, re_path

from routing import proxy

urlpatterns = [
    path("chat/completions", proxy.ChatCompletionsView.as_view()),
    path("completions", proxy.CompletionsView.as_view()),
    path("embeddings", proxy.EmbeddingsView.as_view()),
    path("moderations", proxy.ModerationsView.as_view()),
    path("responses", proxy.ResponsesView.as_view()),
    path("responses/<str:response_id>", proxy.StoredResponseView.as_view()),
    path("models", proxy.ModelListView.as_view()),
    path("models/<path:model_id>", proxy.ModelDetailView.as_view()),
    re_path(r"^(?P<path>.*)$", proxy.unknown_endpoint),
]
