from django.urls import path

from playground.views import playground

urlpatterns = [path("playground/", playground, name="playground")]
